"""The OpenAI-compatible embedder: the real openai client over HTTP against the project's server."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from pipeline.embeddings.remote import EmbeddingResponseError, RemoteEmbedder, openai_client
from pipeline.resilience.breakers import OPEN, BreakerOpenError, Breakers, RedisBreakerStore, ai_breaker_name
from pipeline.resilience.classify import PERMANENT, QUOTA, TRANSIENT, classify
from pipeline.resilience.concurrency import ConcurrencyPolicy, LocalConcurrencyLimiter
from pipeline.testing.openai_server import Faults, OpenAIServer, embedding_vector

FAIL_MAX = 3


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def breakers(redis_url: str, redis_prefix: str) -> Breakers:
    return Breakers(RedisBreakerStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
                    fail_max=FAIL_MAX, reset_seconds=30)


def _embedder(server: OpenAIServer, breakers: Breakers, *, model: str = "text-embedding-3-small",
              batch_size: int = 4, limiter: LocalConcurrencyLimiter | None = None) -> RemoteEmbedder:
    return RemoteEmbedder(openai_client(server.base_url, "test-key", timeout=5), model, dimensions=384,
                          batch_size=batch_size, breakers=breakers,
                          limiter=limiter or LocalConcurrencyLimiter("ai", ConcurrencyPolicy(max_limit=2)))


def test_vectors_come_back_in_order_unit_length_and_in_batches(server: OpenAIServer, breakers: Breakers) -> None:
    texts = [f"message number {i}" for i in range(10)]
    vectors = _embedder(server, breakers).embed(texts)
    assert len(vectors) == 10
    for text, vector in zip(texts, vectors, strict=True):
        assert len(vector) == 384
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-9)
        expected = embedding_vector(text, 384)
        assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < 1e-6  # sent as float32
    assert server.stats()["calls"]["embeddings"] == 3  # 4 + 4 + 2


def test_the_name_carries_the_model(server: OpenAIServer, breakers: Breakers) -> None:
    assert _embedder(server, breakers, model="text-embedding-3-large").name == "openai:text-embedding-3-large"


def test_an_outage_opens_the_breaker_and_then_no_call_is_made(server: OpenAIServer, breakers: Breakers) -> None:
    embedder = _embedder(server, breakers)
    server.faults = Faults(down=True)
    for _ in range(FAIL_MAX):
        with pytest.raises(openai.InternalServerError) as caught:
            embedder.embed(["hello"])
        assert classify(caught.value) == TRANSIENT
    calls = server.stats()["calls"]["embeddings"]
    with pytest.raises(BreakerOpenError) as refused:
        embedder.embed(["hello"])
    assert refused.value.retry_after > 0
    assert server.stats()["calls"]["embeddings"] == calls  # refused here, never sent
    assert breakers.get(ai_breaker_name(server.base_url)).snapshot().state == OPEN


def test_insufficient_quota_is_the_quota_class(server: OpenAIServer, breakers: Breakers) -> None:
    server.faults = Faults(insufficient_quota=True)
    with pytest.raises(openai.RateLimitError) as caught:
        _embedder(server, breakers).embed(["hello"])
    assert classify(caught.value) == QUOTA
    # Not evidence of an outage: the breaker stays closed however often it happens.
    assert breakers.get(ai_breaker_name(server.base_url)).snapshot().failures == 0


def test_a_model_that_cannot_give_384_dimensions_is_a_permanent_error(server: OpenAIServer,
                                                                     breakers: Breakers) -> None:
    # ada-002 refuses `dimensions` (400), as OpenAI's does.
    with pytest.raises(openai.BadRequestError) as caught:
        _embedder(server, breakers, model="text-embedding-ada-002").embed(["hello"])
    assert classify(caught.value) == PERMANENT


def test_a_wrong_sized_answer_is_refused(breakers: Breakers) -> None:
    class Item:
        def __init__(self, index: int, size: int) -> None:
            self.index, self.embedding = index, [1.0] * size

    class Response:
        data = [Item(0, 384), Item(1, 12)]

    from pipeline.embeddings.remote import _vectors

    with pytest.raises(EmbeddingResponseError, match="12 dimensions"):
        _vectors(Response(), 2, 384)
    with pytest.raises(EmbeddingResponseError, match="asked for 3"):
        _vectors(Response(), 3, 384)
    assert classify(EmbeddingResponseError("x")) == PERMANENT


def test_the_concurrency_limit_shrinks_when_the_endpoint_errs(server: OpenAIServer, breakers: Breakers) -> None:
    limiter = LocalConcurrencyLimiter("ai", ConcurrencyPolicy(max_limit=4))
    start = limiter.snapshot().limit
    server.faults = Faults(rate_limit_rate=1.0, retry_after=0.01)
    embedder = _embedder(server, breakers, limiter=limiter, batch_size=1)
    for _ in range(limiter.policy.min_samples):
        with pytest.raises(openai.RateLimitError):
            embedder.embed(["x"])
    assert limiter.snapshot().limit < start


class RecordingServer(OpenAIServer):
    """The project's server, keeping each embeddings request's inputs (to see how texts were batched)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[list[str]] = []

    def _embeddings(self, body: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        self.requests.append(list(body["input"]))
        return super()._embeddings(body)


def test_batches_hold_texts_of_similar_length_and_results_keep_input_order(breakers: Breakers) -> None:
    # Lengths interleaved so that batching in input order would mix short and long texts in every request.
    texts = [("word " * (40 if i % 2 else 1)) + f"#{i}" for i in range(12)]
    with RecordingServer() as server:
        vectors = _embedder(server, breakers, batch_size=4).embed(texts)
        requests = server.requests
    assert len(requests) == 3
    assert sorted(t for r in requests for t in r) == sorted(texts)
    lengths = [[len(t) for t in r] for r in requests]
    # Longest first across requests, so each request spans as few lengths as possible.
    assert [x for r in lengths for x in r] == sorted((len(t) for t in texts), reverse=True)
    assert max(lengths[0]) > 100 and max(lengths[-1]) < 10
    for text, vector in zip(texts, vectors, strict=True):
        expected = embedding_vector(text, 384)
        assert max(abs(a - b) for a, b in zip(vector, expected, strict=True)) < 1e-6
