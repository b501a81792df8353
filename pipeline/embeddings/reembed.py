"""Re-embedding with the configured model after it changed (`mailpipe reembed`).

Every chunk stores the model that made it, and search only compares vectors of the query's model, so
after a model change the messages embedded before it are invisible to semantic search until they are
re-embedded. The work is the embed stage's own (`embed_messages`) over the messages that have no chunk
of the current model, committed slice by slice: an interrupted run keeps what it did, and running it
again picks up only the messages still lacking current-model chunks. `embed_messages` replaces a
message's chunks in the transaction that embeds it (the old model's hashes are not wanted any more),
so a message never has both; a last sweep drops old-model chunks of messages that got current-model
ones some other way (a worker embedding the same message meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, Select, and_, delete, exists, func, select
from sqlalchemy.orm import aliased

from pipeline.stages.embed import MESSAGES_PER_COMMIT, EmbeddingTools, embed_messages
from pipeline.storage.db import transaction
from pipeline.storage.models import EmbeddingChunk, Message


@dataclass(frozen=True, slots=True)
class ReembedPlan:
    """What a re-embed would do: messages lacking chunks of `model`, and the chunks per model now."""

    model: str
    messages: int
    chunks_by_model: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReembedProgress:
    """Where a re-embed is: `done` of `total` messages, vectors computed, old-model chunks deleted."""

    model: str
    total: int
    done: int
    chunks_embedded: int
    old_chunks_deleted: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[ReembedProgress], None]


def chunks_by_model(engine: Engine, account_id: int | None = None) -> dict[str, int]:
    """Stored chunks per model name (several models: a re-embed is due or under way)."""
    query = select(EmbeddingChunk.model, func.count()).group_by(EmbeddingChunk.model).order_by(EmbeddingChunk.model)
    if account_id is not None:
        query = query.where(EmbeddingChunk.account_id == account_id)
    with transaction(engine) as session:
        return {str(model): int(n) for model, n in session.execute(query).all()}


def plan(engine: Engine, model: str, account_id: int | None = None) -> ReembedPlan:
    with transaction(engine) as session:
        stale = int(session.execute(select(func.count()).select_from(_stale_ids(model, account_id).subquery()))
                    .scalar_one())
    return ReembedPlan(model=model, messages=stale, chunks_by_model=chunks_by_model(engine, account_id))


def reembed(engine: Engine, tools: EmbeddingTools, *, account_id: int | None = None,
            per_commit: int = MESSAGES_PER_COMMIT, on_progress: ProgressCallback | None = None) -> ReembedProgress:
    """Give every normalized message (of the account, or all) chunks of `tools.embedder`'s model.

    Commits every `per_commit` messages and reports progress after each commit; an exception (an
    endpoint outage, Ctrl-C) loses only the slice in flight.
    """
    model = tools.embedder.name
    started = time.monotonic()
    with transaction(engine) as session:
        ids = list(session.execute(_stale_ids(model, account_id).order_by(Message.id)).scalars())
    embedded = deleted = done = 0

    def progress() -> ReembedProgress:
        return ReembedProgress(model=model, total=len(ids), done=done, chunks_embedded=embedded,
                               old_chunks_deleted=deleted, seconds=round(time.monotonic() - started, 3))

    if on_progress:
        on_progress(progress())
    for start in range(0, len(ids), per_commit):
        part = ids[start : start + per_commit]
        with transaction(engine) as session:
            # Checked again per slice: a worker may have embedded some of them with this model meanwhile.
            messages = list(session.execute(
                select(Message).where(Message.id.in_(part), ~_has_chunk_of(model)).order_by(Message.id)
            ).scalars())
            old = int(session.execute(select(func.count()).select_from(EmbeddingChunk).where(
                EmbeddingChunk.message_id.in_([m.id for m in messages]), EmbeddingChunk.model != model)).scalar_one())
            embedded += embed_messages(session, messages, tools)  # also deletes those `old` chunks
        deleted += old
        done += len(part)
        if on_progress:
            on_progress(progress())
    deleted += _drop_superseded(engine, model, account_id)
    result = progress()
    if on_progress:
        on_progress(result)
    return result


def _has_chunk_of(model: str) -> Any:
    return exists().where(EmbeddingChunk.message_id == Message.id, EmbeddingChunk.model == model)


def _stale_ids(model: str, account_id: int | None) -> Select[Any]:
    query = select(Message.id).where(Message.normalized_at.is_not(None), ~_has_chunk_of(model))
    if account_id is not None:
        query = query.where(Message.account_id == account_id)
    return query


def _drop_superseded(engine: Engine, model: str, account_id: int | None) -> int:
    """Delete other models' chunks of messages that have chunks of `model`; returns how many."""
    current = aliased(EmbeddingChunk)
    condition = and_(
        EmbeddingChunk.model != model,
        exists().where(current.message_id == EmbeddingChunk.message_id, current.model == model),
    )
    if account_id is not None:
        condition = and_(condition, EmbeddingChunk.account_id == account_id)
    with transaction(engine) as session:
        result = session.execute(delete(EmbeddingChunk).where(condition).execution_options(synchronize_session=False))
        return int(getattr(result, "rowcount", 0) or 0)
