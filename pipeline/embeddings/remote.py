"""Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint, through its breaker and the AI limit.

Every request passes the endpoint's circuit breaker (shared by all workers: an endpoint that is down
is not called by anyone until its reset) and holds one slot of the global AI concurrency limit (which
shrinks while the endpoint errs). The client's own retries are off: a failed request raises the openai
exception, which `classify` maps to a class and the stage's retry policy handles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import openai

from pipeline.errors import MailpipeError
from pipeline.resilience.breakers import Breakers, ai_breaker_name
from pipeline.resilience.classify import PERMANENT, ClassifiedError
from pipeline.resilience.concurrency import ConcurrencyLimiter

OPENAI_BASE_URL = "https://api.openai.com/v1"
SLOT_WAIT_SECONDS = 60.0  # waiting longer for a slot than a request takes means the endpoint is swamped


class EmbeddingResponseError(ClassifiedError):
    """The endpoint answered, but not with one vector of the asked size per input."""

    error_class = PERMANENT


class RemoteEmbedder:
    """`Embedder` over the openai client. `name` is "openai:<model>" (stored per chunk, in its hash)."""

    def __init__(self, client: openai.OpenAI, model: str, *, dimensions: int, batch_size: int,
                 breakers: Breakers, limiter: ConcurrencyLimiter) -> None:
        if batch_size < 1:
            raise MailpipeError(f"embedding batch size must be ≥ 1, got {batch_size}")
        self.client = client
        self.model = model
        self.name = f"openai:{model}"
        self.dimensions = dimensions
        self.batch_size = batch_size
        self.breakers = breakers
        self.limiter = limiter
        self.breaker_name = ai_breaker_name(str(client.base_url))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in input order; requests hold texts of similar length.

        Servers that batch on a GPU (vLLM, TEI, Ollama) pad each request to its longest input, so
        grouping by length keeps padding low; the order is put back before returning.
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        result: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for index, vector in zip(batch, self._request([texts[i] for i in batch]), strict=True):
                result[index] = vector
        return result

    def _request(self, batch: list[str]) -> list[list[float]]:
        # The breaker first: an open one refuses at once, without taking a slot from calls that may go.
        with self.breakers.guard(self.breaker_name):
            response = self.limiter.call(
                self.client.embeddings.create, model=self.model, input=batch, dimensions=self.dimensions,
                timeout=SLOT_WAIT_SECONDS,
            )
        return _vectors(response, len(batch), self.dimensions)


def _vectors(response: Any, expected: int, dimensions: int) -> list[list[float]]:
    data = sorted(response.data, key=lambda d: d.index)
    if len(data) != expected:
        raise EmbeddingResponseError(f"asked for {expected} embeddings, got {len(data)}")
    out: list[list[float]] = []
    for item in data:
        vector = [float(x) for x in item.embedding]
        if len(vector) != dimensions:
            raise EmbeddingResponseError(
                f"the model returned {len(vector)} dimensions, not {dimensions}: it must support `dimensions` "
                f"(text-embedding-3-*) or natively produce {dimensions}"
            )
        norm = math.sqrt(sum(x * x for x in vector))
        # Cosine search compares directions; stored vectors are unit length whatever the server sends.
        out.append([x / norm for x in vector] if norm else vector)
    return out


def openai_client(base_url: str | None, api_key: str | None, timeout: float) -> openai.OpenAI:
    """A client with its own retries off: retries belong to the stage's policy, not to the library.

    Without a key (OPENAI_API_KEY unset too) a placeholder is sent: local servers (Ollama, vLLM) ignore it.
    """
    key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
    return openai.OpenAI(base_url=base_url or OPENAI_BASE_URL, api_key=key, timeout=timeout, max_retries=0)
