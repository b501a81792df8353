"""Text embeddings: chunking (`chunking`), the local MiniLM embedder (`local`), an OpenAI-compatible
endpoint's (`remote`), their contract and the choice between them (`embedder_for`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pipeline.settings import Settings


@runtime_checkable
class Embedder(Protocol):
    """What the embed stage needs from a model: local MiniLM today, an OpenAI-compatible one later.

    `name` goes into every chunk's content hash, so changing models re-embeds everything once.
    `embed` returns one unit-length vector of `dimensions` floats per text, in input order.
    """

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def embedder_for(settings: Settings, engine: Engine, *, threads: int | None = None,
                 half_weights: bool = False) -> Embedder | None:
    """The configured embedder (None for 'none'). `threads` and `half_weights`: for the local model."""
    if settings.embedder == "none":
        return None
    if settings.embedder == "local":
        from pipeline.embeddings.local import LocalEmbedder

        return LocalEmbedder(batch_size=settings.embed_batch_size, threads=threads, half_weights=half_weights)
    from pipeline.embeddings.remote import RemoteEmbedder, openai_client
    from pipeline.resilience.breakers import breakers_for
    from pipeline.resilience.concurrency import limiter_for
    from pipeline.storage.models import EMBEDDING_DIMENSIONS

    key = settings.ai_api_key.get_secret_value() if settings.ai_api_key else None
    return RemoteEmbedder(
        openai_client(settings.ai_base_url, key, settings.ai_timeout), settings.ai_embed_model,
        dimensions=EMBEDDING_DIMENSIONS, batch_size=settings.ai_embed_batch_size,
        breakers=breakers_for(settings, engine), limiter=limiter_for(settings),
    )


# One short query gains nothing from splitting its matrices over cores, and on a machine whose
# workers are embedding, two torch threads per query spin against them: 10-30x slower than one
# (docs/PERFORMANCE.md, search latency).
QUERY_THREADS = 1


def query_embedder_for(settings: Settings, engine: Engine) -> Embedder | None:
    """The configured embedder for embedding search queries, one at a time.

    The local model's weights are fp16 here (pipeline.embeddings.half_weights): a query's time is
    most of a search's, and its vector stays within 1e-5 cosine of the fp32 one the chunks hold."""
    return embedder_for(settings, engine, threads=QUERY_THREADS, half_weights=True)
