from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.embeddings import Embedder, local
from pipeline.embeddings.half_weights import HalfWeightLinear, half_weights_supported, pack_half_weights
from pipeline.embeddings.local import DIMENSIONS, MAX_TOKENS, PAD_STEPS, LocalEmbedder, pad_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(batch_size=4, threads=2)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # vectors are unit length


def test_is_an_embedder(embedder: LocalEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dimensions == DIMENSIONS == 384


def test_vectors_have_384_unit_dimensions(embedder: LocalEmbedder) -> None:
    vectors = embedder.embed(["Hello there.", "Subject: Invoice\nFrom: Shop\nYour invoice for March is attached."])
    assert len(vectors) == 2
    for vector in vectors:
        assert len(vector) == 384
        assert all(isinstance(x, float) for x in vector)
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-5)


def test_order_is_restored_after_length_sorting(embedder: LocalEmbedder) -> None:
    texts = [
        "short",
        "a much longer text about the quarterly budget review meeting that moved to next Thursday " * 3,
        "medium length sentence about cats",
        "",
        "another fairly long message asking whether the contract was signed and sent back to legal",
    ]
    together = embedder.embed(texts)
    # batch_size=4 puts the five texts in two batches: each one alone must give the same vector
    for text, vector in zip(texts, together, strict=True):
        alone = embedder.embed([text])[0]
        assert cosine(alone, vector) > 0.9999


def test_similar_texts_are_closer_than_unrelated_ones(embedder: LocalEmbedder) -> None:
    meeting, moved, recipe = embedder.embed(
        [
            "Can we move our meeting to Thursday afternoon?",
            "Would it be possible to reschedule the meeting to Thursday?",
            "Preheat the oven and bake the bread for forty minutes.",
        ]
    )
    assert cosine(meeting, moved) > cosine(meeting, recipe) + 0.3


def test_empty_input_loads_nothing() -> None:
    lazy = LocalEmbedder()
    assert lazy.embed([]) == []
    assert lazy._model is None


@pytest.mark.parametrize(("batch_size", "threads"), [(0, None), (64, 0)])
def test_bad_arguments_are_rejected(batch_size: int, threads: int | None) -> None:
    with pytest.raises(ValueError):
        LocalEmbedder(batch_size=batch_size, threads=threads)


def test_padding_to_a_multiple_changes_no_vector(embedder: LocalEmbedder) -> None:
    # Padding batches to a multiple of a step (so tensor shapes repeat and the heap is reused) must give
    # the vectors that padding to the longest text gives: the padding is masked out. The texts fall in
    # all three steps' ranges, so the embedder makes one encode call per step.
    texts = ["short", "a medium sentence about the meeting on Tuesday", "word " * 150, "x" * 40, "two " * 90]
    exact = LocalEmbedder(batch_size=2, pad_steps=((MAX_TOKENS, 1),))
    exact_vectors = exact.embed(texts)
    padded = embedder.embed(texts)
    assert embedder.pad_steps == PAD_STEPS
    for a, b in zip(exact_vectors, padded, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def test_padded_lengths_form_a_small_fixed_set() -> None:
    padded = {-(-n // pad_step(n)) * pad_step(n) for n in range(1, MAX_TOKENS + 1)}
    assert padded == {*range(8, 65, 8), *range(80, 129, 16), *range(160, 257, 32)}
    # Padding adds under 8 tokens to a short batch, under a quarter of its length to a longer one.
    assert all(-(-n // pad_step(n)) * pad_step(n) - n < max(8, n / 4) for n in range(1, MAX_TOKENS + 1))


def test_a_single_text_gets_the_vector_a_batch_gives(embedder: LocalEmbedder) -> None:
    """One text (a search query) is encoded without padding or mask: still the batch's vector, truncation
    included (both against sentence-transformers: tests/test_minilm.py)."""
    texts = ["where is the invoice for March?", "word " * 400]
    for text, batched in zip(texts, embedder.embed([*texts, "a third text to pad"]), strict=False):
        got = embedder.embed([text])[0]
        assert max(abs(x - y) for x, y in zip(batched, got, strict=True)) < 1e-5


def test_half_weights_keep_the_fp32_vectors(embedder: LocalEmbedder) -> None:
    """The query embedder's fp16 weights move a vector by less than 1e-5 of cosine, long texts too."""
    half = LocalEmbedder(threads=1, half_weights=True)
    if not half_weights_supported():
        pytest.skip("torch has no fbgemm on this CPU: the model stays fp32")
    assert any(isinstance(m, HalfWeightLinear) for m in half._load().model.modules())
    texts = ["where is the invoice for March?", "word " * 400, "Subject: offsite\nFrom: Ana\n\nsee you Friday"]
    for text in texts:
        expected = embedder.embed([text])[0]
        for got in (half.embed([text])[0], half.embed([text, "another text"])[0]):
            assert sum(x * y for x, y in zip(expected, got, strict=True)) > 1 - 1e-5
            assert abs(math.fsum(x * x for x in got) - 1.0) < 1e-5


def test_without_fbgemm_nothing_is_packed() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert pack_half_weights(model, engines=["qnnpack"]) == 0
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]


def test_a_packed_linear_computes_what_the_linear_does() -> None:
    import torch

    if not half_weights_supported():
        pytest.skip("torch has no fbgemm on this CPU")
    torch.manual_seed(0)
    linear, plain = torch.nn.Linear(384, 96), torch.nn.Linear(96, 32, bias=False)
    model = torch.nn.Sequential(linear, torch.nn.ReLU(), plain)
    x = torch.randn(2, 7, 384)  # batch and sequence dimensions, as the transformer passes them
    with torch.inference_mode():
        expected = model(x)
        assert pack_half_weights(model) == 2
        got = model(x)
    assert got.shape == expected.shape == (2, 7, 32)
    assert float((got - expected).norm() / expected.norm()) < 1e-3


# In a process of its own: the model built by preload(), then a fork whose child embeds with it, as a
# worker's pool parent and its children do (tasks.app).
_FORKED = """
import json, os
def threads(): return len(os.listdir("/proc/self/task"))
import torch
from pipeline.embeddings import local
before, torch_before = threads(), torch.get_num_threads()
local.preload()
after = threads()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    embedder = local.LocalEmbedder(threads=2)
    vectors = embedder.embed(TEXTS)
    shared = embedder._model is next(iter(local._PRELOADED.values()))
    os.write(w, json.dumps({"vectors": vectors, "shared": shared}).encode())
    os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 1 << 20):
    data += chunk
os.waitpid(pid, 0)
print(json.dumps({"threads": [before, after], "torch_threads": [torch_before, torch.get_num_threads()],
                  **json.loads(data)}))
"""


def test_a_preloaded_model_is_shared_by_a_forked_child_and_starts_no_thread_before_the_fork(
        embedder: LocalEmbedder) -> None:
    texts = ["Hello there.", "Subject: Invoice\nFrom: Shop\nYour invoice for March is attached."]
    # Without preload's one thread the build started torch's OpenMP threads in the parent, and the
    # forked child hung on its first embedding (seen: the timeout below).
    proc = subprocess.Popen([sys.executable, "-c", f"TEXTS = {texts!r}\n{_FORKED}"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the forked child too
        proc.communicate()
        pytest.fail("the child forked after preload() never answered")
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["threads"][0] == out["threads"][1]  # the build ran no thread of torch's
    assert out["torch_threads"][0] == out["torch_threads"][1]  # its thread count put back
    assert out["shared"] is True
    for got, want in zip(out["vectors"], embedder.embed(texts), strict=True):
        assert cosine(got, want) > 0.99999


def test_a_half_weights_embedder_does_not_use_the_preloaded_fp32_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_PRELOADED", {})
    local.preload()
    fp32, half = LocalEmbedder(threads=1), LocalEmbedder(threads=1, half_weights=True)
    fp32.embed(["a"])
    half.embed(["a"])
    assert fp32._model is local._PRELOADED[(fp32.model_dir, fp32.max_tokens)]
    assert half._model is not fp32._model
