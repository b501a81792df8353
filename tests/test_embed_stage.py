"""The embed stage on the test database: only new hashes are embedded, vectors are reused, orphans deleted.

The remote embedder against the project's OpenAI-compatible server, so every vector computed is a request
the server counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from pipeline.embeddings.chunking import load_tokenizer
from pipeline.embeddings.local import bundled_model_dir
from pipeline.embeddings.remote import RemoteEmbedder, openai_client
from pipeline.resilience.breakers import Breakers, RedisBreakerStore
from pipeline.resilience.concurrency import ConcurrencyPolicy, LocalConcurrencyLimiter
from pipeline.runs import ensure_account
from pipeline.stages.embed import EmbeddingTools, embed_messages
from pipeline.storage.db import transaction
from pipeline.storage.models import EmbeddingChunk, Message
from pipeline.testing.openai_server import OpenAIServer

SENTENCE = "Line {} of the quarterly report: the numbers for region {} look better than last month's. "


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def tools(server: OpenAIServer, redis_url: str, redis_prefix: str) -> EmbeddingTools:
    breakers = Breakers(RedisBreakerStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
                        fail_max=5, reset_seconds=30)
    embedder = RemoteEmbedder(openai_client(server.base_url, "test-key", timeout=10), "text-embedding-3-small",
                              dimensions=384, batch_size=64, breakers=breakers,
                              limiter=LocalConcurrencyLimiter("ai", ConcurrencyPolicy(max_limit=2)))
    return EmbeddingTools(embedder=embedder, tokenizer=load_tokenizer(bundled_model_dir()))


def _add(engine: Engine, account_id: int, key: str, body: str) -> int:
    with transaction(engine) as s:
        m = Message(account_id=account_id, message_key=key, source_ref=key, raw=b"", size=0, content_hash=key,
                    subject="Quarterly report", from_email="ann@example.com", from_name="Ann",
                    stripped_text=body, normalized_at=func.now())
        s.add(m)
        s.flush()
        return m.id


def _embed(engine: Engine, tools: EmbeddingTools, ids: list[int]) -> int:
    with transaction(engine) as s:
        messages = list(s.execute(select(Message).where(Message.id.in_(ids)).order_by(Message.id)).scalars())
        return embed_messages(s, messages, tools)


def _chunks(engine: Engine, message_id: int) -> list[tuple[int, int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT id, chunk_index, content_hash FROM embedding_chunks WHERE message_id = :m ORDER BY chunk_index"),
            {"m": message_id})]


def test_only_new_text_is_embedded_and_orphans_are_deleted(engine: Engine, server: OpenAIServer,
                                                           tools: EmbeddingTools) -> None:
    account = ensure_account(engine, "me@example.com", [])
    long_body = "".join(SENTENCE.format(i, i * 7) for i in range(40))  # several distinct chunks
    edited, other = _add(engine, account, "a", long_body), _add(engine, account, "b", long_body)
    first = _embed(engine, tools, [edited, other])
    a_chunks, b_chunks = _chunks(engine, edited), _chunks(engine, other)
    assert len(a_chunks) >= 3
    # Same subject, sender and text: the two messages share hashes, so each text was embedded once.
    assert first == len({h for _, _, h in a_chunks}) == len(a_chunks)
    assert [h for _, _, h in a_chunks] == [h for _, _, h in b_chunks]
    assert server.stats()["calls"]["embeddings"] == 1

    # The message's text changes at its end: its first chunks keep their hashes, the tail is new.
    with transaction(engine) as s:
        s.execute(text("UPDATE messages SET stripped_text = :t, embedded_at = NULL WHERE id = :m"),
                  {"t": long_body + "Addendum: the April figures follow next week, once finance signs off.",
                   "m": edited})
    server.reset_stats()
    second = _embed(engine, tools, [edited])
    after = _chunks(engine, edited)
    old_hashes, new_hashes = {h for _, _, h in a_chunks}, {h for _, _, h in after}
    assert second == len(new_hashes - old_hashes) >= 1
    assert server.stats()["calls"]["embeddings"] == 1
    # Kept chunks are the same rows; orphans (old hashes no longer produced) are gone.
    assert {(i, h) for i, _, h in a_chunks if h in new_hashes} <= {(i, h) for i, _, h in after}
    assert not (old_hashes - new_hashes) & {h for _, _, h in after}
    assert [c for _, c, _ in after] == list(range(len(after)))
    assert _chunks(engine, other) == b_chunks  # the other message's chunks are untouched
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages WHERE embedded_at IS NULL")).scalar_one() == 0

    # Nothing new: no request at all, and the rows stay as they are.
    server.reset_stats()
    assert _embed(engine, tools, [edited, other]) == 0
    assert server.stats()["calls"]["embeddings"] == 0
    assert _chunks(engine, edited) == after
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(EmbeddingChunk)).scalar_one()
    assert total == len(after) + len(b_chunks)
