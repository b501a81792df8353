"""pipeline.embeddings.minilm against sentence-transformers, the implementation the vectors must equal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.embeddings.local import MAX_TOKENS, LocalEmbedder, bundled_model_dir
from pipeline.embeddings.minilm import MiniLM, ModelFolderError
from pipeline.errors import ConfigError

# Every kind of text the stages embed: short and long (truncated at 256 tokens), empty and blank,
# accents, CJK, emoji, markup left in a body, numbers, a header block.
TEXTS = [
    "Hello there.",
    "",
    "   \n\t ",
    "word " * 400,
    "Ünïcödé café, naïve résumé — 日本語のテキスト 🎉🎉",
    "Subject: Invoice\nFrom: Shop <billing@shop.example>\n\nYour invoice for March (#2024-0331) is attached.",
    "<b>bold</b> &amp; <a href='x'>link</a> " * 20,
    "x" * 3000,
    "Can we move our meeting to Thursday afternoon? " * 6,
    "1234567890 " * 30,
]


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
    assert model.max_seq_length == MAX_TOKENS
    return model.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True)


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM.load(bundled_model_dir(), MAX_TOKENS)


def test_token_ids_are_sentence_transformers_own(minilm: MiniLM) -> None:
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(str(bundled_model_dir()), local_files_only=True)(
        TEXTS, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    got = minilm.token_ids(TEXTS)
    assert got == expected
    assert max(len(ids) for ids in got) == MAX_TOKENS  # the long texts were cut, [SEP] kept last
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in got)


@pytest.mark.parametrize("pad", [1, 8, 32])
def test_batches_give_sentence_transformers_vectors(minilm: MiniLM, reference: torch.Tensor, pad: int) -> None:
    ids = minilm.token_ids(TEXTS)
    got = torch.cat([minilm.encode_ids(ids[i : i + 3], pad_to_multiple_of=pad) for i in range(0, len(ids), 3)])
    assert got.shape == reference.shape == (len(TEXTS), 384)
    assert float((got - reference).abs().max()) < 1e-5


def test_one_text_without_padding_gives_the_same_vector(minilm: MiniLM, reference: torch.Tensor) -> None:
    got = torch.cat([minilm.encode_ids([ids]) for ids in minilm.token_ids(TEXTS)])
    assert float((got - reference).abs().max()) < 1e-5


def test_the_embedder_gives_sentence_transformers_vectors(reference: torch.Tensor) -> None:
    """The stage's path (sorting, batches of 4, padding steps) and the query's path (one text)."""
    embedder = LocalEmbedder(batch_size=4, threads=2)
    together = torch.tensor(embedder.embed(TEXTS))
    alone = torch.tensor([embedder.embed([text])[0] for text in TEXTS])
    assert float((together - reference).abs().max()) < 1e-5
    assert float((alone - reference).abs().max()) < 1e-5


def _folder_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(bundled_model_dir() / "model.safetensors")
    return folder


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: (f / "tokenizer.json").unlink(), "no tokenizer.json"),
    (lambda f: _edit_json(f / "config.json", model_type="roberta"), "model_type is 'roberta'"),
    (lambda f: _edit_json(f / "config.json", hidden_act="relu"), "hidden_act is 'relu'"),
    (lambda f: _edit_json(f / "config.json", num_hidden_layers=7), "does not fit config.json"),
    (lambda f: _edit_json(f / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False,
                          pooling_mode_cls_token=True), "only pooling_mode_mean_tokens"),
    (lambda f: (f / "config.json").write_text("{not json"), "is not JSON"),
])
def test_a_folder_it_does_not_implement_is_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = _folder_copy(tmp_path)
    MiniLM.load(folder, MAX_TOKENS)  # the copy itself loads
    edit(folder)
    with pytest.raises(ModelFolderError, match=message) as caught:
        MiniLM.load(folder, MAX_TOKENS)
    assert isinstance(caught.value, ConfigError)  # a setting to fix, not a failure to retry


def test_max_tokens_beyond_the_positions_is_refused() -> None:
    with pytest.raises(ModelFolderError, match="outside the model's 1..512"):
        MiniLM.load(bundled_model_dir(), 513)


def test_weights_with_a_projection_missing_are_refused() -> None:
    from safetensors.torch import load_file

    from pipeline.embeddings.minilm import BertShape, MiniLMModel

    state = load_file(str(bundled_model_dir() / "model.safetensors"))
    del state["encoder.layer.2.attention.self.key.weight"]
    model = MiniLMModel(BertShape.from_config(json.loads((bundled_model_dir() / "config.json").read_text())))
    with pytest.raises(ModelFolderError, match=r"layers\.2\.qkv\.weight lacks \['attention\.self\.key'\]"):
        model.load_checkpoint(state)
