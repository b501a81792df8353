"""The web API's memory of recent query vectors (pipeline.embeddings.recent)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.embeddings import Embedder
from pipeline.embeddings.recent import RecentQueries


class Counting:
    """A deterministic embedder that records every text it is asked for."""

    name, dimensions = "counting", 3

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.fail = False

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.fail:
            raise RuntimeError("endpoint down")
        self.asked += list(texts)
        return [[float(len(t)), 1.0, 0.0] for t in texts]


def test_a_repeated_query_is_embedded_once_and_batches_pass_through() -> None:
    inner = Counting()
    recent = RecentQueries(inner, size=2)
    assert isinstance(recent, Embedder) and (recent.name, recent.dimensions) == ("counting", 3)
    first = recent.embed(["budget review"])
    first[0][0] = 99.0  # a caller changing its list does not change what is kept
    assert recent.embed(["budget review"]) == [[13.0, 1.0, 0.0]]
    assert inner.asked == ["budget review"]
    recent.embed(["a", "b"])  # a batch (the embed stage's kind of call) is never answered from memory
    recent.embed(["a", "b"])
    assert inner.asked == ["budget review", "a", "b", "a", "b"]


def test_the_least_recently_used_query_is_forgotten_and_failures_are_not_kept() -> None:
    inner = Counting()
    recent = RecentQueries(inner, size=2)
    for q in ("one", "two", "one", "three"):  # "two" is the least recently used when "three" arrives
        recent.embed([q])
    recent.embed(["one"])
    recent.embed(["two"])
    assert inner.asked == ["one", "two", "three", "two"]
    inner.fail = True
    with pytest.raises(RuntimeError):
        recent.embed(["four"])
    inner.fail = False
    recent.embed(["four"])
    assert inner.asked[-1] == "four"
    with pytest.raises(ValueError):
        RecentQueries(inner, size=0)


def test_the_web_apis_search_embedder_keeps_recent_queries(pg_url: str) -> None:
    from pipeline.settings import Settings
    from tasks.web.resources import Resources

    res = Resources.build(Settings(embedder="local", broker_url=None, redis_url=None), pg_url)
    embedder = res.embedder()
    assert isinstance(embedder, RecentQueries) and embedder.name == "all-MiniLM-L6-v2"
    assert Resources.build(Settings(embedder="none", broker_url=None, redis_url=None), pg_url).embedder() is None
