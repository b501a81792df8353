"""Text embeddings: chunking (`chunking`), the local MiniLM embedder (`local`) and their contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Embedder(Protocol):
    """What the embed stage needs from a model: local MiniLM today, an OpenAI-compatible one later.

    `name` goes into every chunk's content hash, so changing models re-embeds everything once.
    `embed` returns one unit-length vector of `dimensions` floats per text, in input order.
    """

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...
