"""Embeddings across imports and model changes, with the remote embedder (the real openai client over HTTP)
against the project's OpenAI-compatible server.

The sample mailbox is imported once per module through the real CLI (its own worker pool on the embedded
broker, so no other test session's worker takes its tasks). Each re-embed test then switches to a model
of its own, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.embeddings.chunking import load_tokenizer
from pipeline.embeddings.local import bundled_model_dir
from pipeline.embeddings.reembed import ReembedProgress, chunks_by_model, plan, reembed
from pipeline.embeddings.remote import RemoteEmbedder, openai_client
from pipeline.resilience.breakers import Breakers, RedisBreakerStore
from pipeline.resilience.concurrency import ConcurrencyPolicy, LocalConcurrencyLimiter
from pipeline.search import search
from pipeline.stages.embed import EmbeddingTools
from pipeline.testing.openai_server import Faults, OpenAIServer
from tests.oracle import mbox_facts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
FIRST_MODEL = "text-embedding-3-small"


@dataclass
class Imported:
    engine: Engine
    server: OpenAIServer
    env: dict[str, str]
    mbox: Path
    first: dict[str, Any]
    first_stats: dict[str, Any]


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "tasks.cli", *args, "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def _scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


@pytest.fixture(scope="module")
def imported(pg_url: str, mailpipe_env: dict[str, str], sample_mbox: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    from pipeline.storage.db import engine_for
    from pipeline.storage.models import Base

    engine = engine_for(pg_url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    with OpenAIServer() as server:
        # No broker and no Redis: `mailpipe import` starts its own worker pool on the embedded (SQL) broker.
        env = {k: v for k, v in {**os.environ, **mailpipe_env}.items()
               if k not in ("MAILPIPE_BROKER_URL", "MAILPIPE_REDIS_URL")}
        env.update({"MAILPIPE_EMBEDDER": "openai", "MAILPIPE_AI_BASE_URL": server.base_url,
                    "MAILPIPE_AI_API_KEY": "test-key", "MAILPIPE_AI_EMBED_MODEL": FIRST_MODEL,
                    "MAILPIPE_WORKER_CONCURRENCY": "2", "MAILPIPE_WINDOW_SIZE": "20",
                    "MAILPIPE_HOME": str(tmp_path_factory.mktemp("reembed-home"))})
        first = _cli(env, "import", str(sample_mbox), "--account", "me@example.com")
        yield Imported(engine, server, env, sample_mbox, first, server.stats())


@pytest.fixture
def breakers(redis_url: str, redis_prefix: str) -> Breakers:
    return Breakers(RedisBreakerStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
                    fail_max=5, reset_seconds=30)


def _tools(server: OpenAIServer, breakers: Breakers, model: str) -> EmbeddingTools:
    embedder = RemoteEmbedder(openai_client(server.base_url, "test-key", timeout=10), model, dimensions=384,
                              batch_size=16, breakers=breakers,
                              limiter=LocalConcurrencyLimiter("ai", ConcurrencyPolicy(max_limit=2)))
    return EmbeddingTools(embedder=embedder, tokenizer=load_tokenizer(bundled_model_dir()))


def _message_models(engine: Engine) -> dict[int, set[str]]:
    """Per normalized message, the models its chunks were made with (empty: no chunk)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT m.id, c.model FROM messages m LEFT JOIN embedding_chunks c ON c.message_id = m.id "
            "WHERE m.normalized_at IS NOT NULL")).all()
    out: dict[int, set[str]] = {}
    for mid, model in rows:
        out.setdefault(mid, set())
        if model is not None:
            out[mid].add(model)
    return out


def _assert_no_duplicate_chunks(engine: Engine) -> None:
    assert _scalar(engine, "SELECT count(*) FROM (SELECT message_id, chunk_index FROM embedding_chunks "
                           "GROUP BY 1, 2 HAVING count(*) > 1) d") == 0


def test_resync_of_an_unchanged_mailbox_makes_no_embedding_call(imported: Imported) -> None:
    facts = mbox_facts(imported.mbox)
    assert imported.first["new_messages"] == facts.messages and imported.first["chunks_embedded"] > 0
    assert imported.first_stats["calls"]["embeddings"] > 0
    imported.server.reset_stats()
    second = _cli(imported.env, "import", str(imported.mbox), "--account", "me@example.com")
    stats = imported.server.stats()
    assert second["status"] == "done" and second["new_messages"] == 0 and second["chunks_embedded"] == 0
    assert stats["calls"]["embeddings"] == 0, stats
    assert stats["calls"]["chat.completions"] == 0, stats


def test_a_model_change_reembeds_every_message_and_search_finds_them(imported: Imported,
                                                                     breakers: Breakers) -> None:
    engine = imported.engine
    tools = _tools(imported.server, breakers, "reembed-model-b")
    model = tools.embedder.name  # "openai:reembed-model-b", as stored per chunk
    before = _message_models(engine)
    assert before and all(models and model not in models for models in before.values())
    with engine.connect() as conn:
        target_id, key, chunk = conn.execute(text(
            "SELECT m.id, coalesce(m.rfc_message_id, m.message_key), c.text FROM messages m "
            "JOIN embedding_chunks c ON c.message_id = m.id ORDER BY m.id, c.chunk_index LIMIT 1")).one()
    # Before: the query's model has no vectors, so nothing is found semantically.
    hits = search(engine, chunk, account_id=None, limit=10, embedder=tools.embedder)
    assert all(h.matched == "text" for h in hits)
    assert plan(engine, model).messages == len(before)
    old_chunks = _scalar(engine, "SELECT count(*) FROM embedding_chunks")

    seen: list[ReembedProgress] = []
    result = reembed(engine, tools, per_commit=16, on_progress=seen.append)

    after = _message_models(engine)
    assert all(models == {model} for models in after.values()), after
    assert result.total == result.done == len(before)
    assert result.old_chunks_deleted == old_chunks  # every chunk there was, all of other models
    assert set(chunks_by_model(engine)) == {model}
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].done == len(before)
    assert len(seen) >= 1 + -(-len(before) // 16)  # one report per committed slice, at least
    _assert_no_duplicate_chunks(engine)
    hits = search(engine, chunk, account_id=None, limit=10, embedder=tools.embedder)
    target = next(h for h in hits if h.message_id == key)
    assert target.matched in ("vector", "both")
    assert _scalar(engine, f"SELECT count(*) FROM messages WHERE id = {int(target_id)} AND embedded_at IS NULL") == 0
    # Nothing is left to do: running it again embeds nothing and calls nothing.
    imported.server.reset_stats()
    again = reembed(engine, tools)
    assert again.total == 0 and again.chunks_embedded == 0
    assert imported.server.stats()["calls"]["embeddings"] == 0


def test_an_interrupted_reembed_resumes_without_duplicates(imported: Imported, breakers: Breakers) -> None:
    engine = imported.engine
    tools = _tools(imported.server, breakers, "reembed-model-c")
    model = tools.embedder.name  # "openai:reembed-model-c", as stored per chunk
    messages = len(_message_models(engine))
    chunks_before = _scalar(engine, "SELECT count(*) FROM embedding_chunks")

    def outage_after_first_slice(p: ReembedProgress) -> None:
        if p.done >= 8:
            imported.server.faults.update(down=True)

    try:
        with pytest.raises(openai.APIError):
            reembed(engine, tools, per_commit=8, on_progress=outage_after_first_slice)
    finally:
        imported.server.faults = Faults()
    halfway = _message_models(engine)
    done = [mid for mid, models in halfway.items() if model in models]
    assert len(done) == 8  # the first slice was committed, the one in flight rolled back
    # Per message, chunks are replaced in one transaction: never both models, never none.
    assert all(len(models) == 1 for models in halfway.values()), halfway
    _assert_no_duplicate_chunks(engine)

    imported.server.reset_stats()
    rest = reembed(engine, tools, per_commit=8)
    assert rest.total == messages - 8  # only what the first run left
    after = _message_models(engine)
    assert all(models == {model} for models in after.values())
    _assert_no_duplicate_chunks(engine)
    assert _scalar(engine, "SELECT count(*) FROM embedding_chunks") == chunks_before  # same texts, same chunking
    # Vectors were computed only for the remaining messages' chunks whose text the first run had not embedded.
    with engine.connect() as conn:
        new_hashes = conn.execute(text(
            "SELECT count(DISTINCT content_hash) FROM embedding_chunks WHERE message_id <> ALL(:ids) AND "
            "content_hash NOT IN (SELECT content_hash FROM embedding_chunks WHERE message_id = ANY(:ids))"),
            {"ids": done}).scalar_one()
    assert rest.chunks_embedded == new_hashes > 0
    assert imported.server.stats()["calls"]["embeddings"] >= 1


def test_the_reembed_command(imported: Imported) -> None:
    model = "reembed-model-d"
    messages = len(_message_models(imported.engine))
    env = {**imported.env, "MAILPIPE_AI_EMBED_MODEL": model}
    first = _cli(env, "reembed", "--account", "me@example.com")
    assert first["model"] == f"openai:{model}" and first["done"] == messages and first["remaining"] == 0
    assert list(first["chunks_by_model"]) == [f"openai:{model}"]
    assert first["chunks_embedded"] > 0 and first["old_chunks_deleted"] > 0
    status = _cli(env, "status")
    assert status["chunks_by_model"] == first["chunks_by_model"]
    second = _cli(env, "reembed")
    assert second["done"] == 0 and second["chunks_embedded"] == 0 and second["old_chunks_deleted"] == 0


def test_the_reembed_command_shows_progress_and_a_summary(imported: Imported) -> None:
    model = "reembed-model-e"
    messages = len(_message_models(imported.engine))
    env = {**imported.env, "MAILPIPE_AI_EMBED_MODEL": model}
    result = subprocess.run([sys.executable, "-m", "tasks.cli", "reembed"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{messages} message(s) to embed" in result.stderr  # the plan, before the progress bar
    assert f"re-embedded {messages} message(s) with openai:{model}" in " ".join(result.stdout.split())
    assert chunks_by_model(imported.engine).keys() == {f"openai:{model}"}
