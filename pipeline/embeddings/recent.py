"""The vectors of recently searched queries, kept by the web API's process.

A search page is recomputed for every page (`pipeline.pages`): without this, each next page embedded
its query again, ~20 ms of MiniLM on this machine or a remote call (and its cost) per page.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from pipeline.embeddings import Embedder

RECENT_QUERIES = 256  # ~400 KB of 384-dim vectors


class RecentQueries:
    """An Embedder answering a single text from the last `size` single texts it embedded; anything
    else (a batch, a text not seen lately) goes to `inner`. A failed call is not remembered."""

    def __init__(self, inner: Embedder, size: int = RECENT_QUERIES) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.inner, self.size = inner, size
        self.name, self.dimensions = inner.name, inner.dimensions
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if len(texts) != 1:
            return self.inner.embed(texts)
        text = texts[0]
        with self._lock:
            vector = self._vectors.get(text)
            if vector is not None:
                self._vectors.move_to_end(text)
                return [list(vector)]  # a copy: the caller may change its list
        vector = self.inner.embed([text])[0]  # outside the lock: other queries need not wait for this one
        with self._lock:
            self._vectors[text] = list(vector)
            self._vectors.move_to_end(text)
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)
        return [vector]
