"""An AI outage end to end: real CLI, worker and beat processes, the openai client against the project's
server. While the endpoint is down ingest, normalize and contacts finish and the run completes; the
breaker opens; once the endpoint is back the beat's sweep resumes the enrichment without anyone acting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.resilience.breakers import ai_breaker_name, breaker_states
from pipeline.settings import Settings
from pipeline.testing.openai_server import Faults, OpenAIServer
from tests.conftest import REDIS_URL, CeleryProcess, celery_worker, delete_redis_prefix
from tests.oracle import mbox_facts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def _other_db(url: str) -> str:
    """The test Redis, another database: this test's broker must not feed the session's worker."""
    base, _, db = url.rpartition("/")
    return f"{base}/{(int(db) - 3) % 16 if db.isdigit() else 12}"  # 15 → 12 (13 is the quota bench's)


def _import(env: dict[str, str], mbox: Path) -> dict[str, Any]:
    """`mailpipe import --json` as its own process (this process's Celery app talks to another broker)."""
    result = subprocess.run([sys.executable, "-m", "tasks.cli", "import", str(mbox), "--account", "me@example.com",
                             "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


@pytest.fixture
def ai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(faults=Faults(down=True)) as server:
        yield server


@pytest.fixture
def ai_env(mailpipe_env: dict[str, str], ai_server: OpenAIServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    broker = _other_db(REDIS_URL)
    client = redis.Redis.from_url(broker)
    client.flushdb()  # a queue left by an earlier run of this test
    client.close()
    env = {**os.environ, **mailpipe_env, "MAILPIPE_BROKER_URL": broker, "MAILPIPE_EMBEDDER": "openai",
           "MAILPIPE_AI_BASE_URL": ai_server.base_url, "MAILPIPE_AI_API_KEY": "test-key",
           "MAILPIPE_WINDOW_SIZE": "10", "MAILPIPE_ENRICHMENT_SWEEP_SECONDS": "2",
           "MAILPIPE_BREAKER_RESET_SECONDS": "3", "MAILPIPE_HOME": str(tmp_path / "home")}
    yield env
    delete_redis_prefix(broker, "mailpipe:breaker:")


def test_ai_down_then_up_enrichment_resumes_by_itself(engine: Engine, ai_server: OpenAIServer,
                                                     ai_env: dict[str, str], sample_mbox: Path,
                                                     tmp_path: Path) -> None:
    worker = celery_worker(ai_env, tmp_path / "worker.log", name="ai-outage")
    beat = CeleryProcess(["beat", "-s", str(tmp_path / "beat-schedule"), "-l", "INFO", "--max-interval", "1"],
                         ai_env, tmp_path / "beat.log", ready="beat: Starting")
    worker.start()
    beat.start()
    try:
        summary = _import(ai_env, sample_mbox)  # the endpoint is down for the whole import
        facts = mbox_facts(sample_mbox)
        assert summary["status"] == "done" and summary["new_messages"] == facts.messages, summary
        assert summary["chunks_embedded"] == 0 and summary["failed_windows"] == 0
        assert summary["enrichment_owed"] > 0  # not a failure (exit 0): owed, and said so
        with engine.connect() as conn:
            stages = conn.execute(text(
                "SELECT bool_and(ingest = 'done' AND normalize = 'done' AND contacts = 'done'), "
                "bool_and(embed <> 'done'), count(*) FROM windows")).one()
            normalized = conn.execute(text("SELECT count(*) FROM messages WHERE normalized_at IS NOT NULL")).scalar()
            owed = conn.execute(text("SELECT count(*) FROM failures WHERE stage = 'embed' AND item_ref = 'window' "
                                     "AND error_class = 'transient'")).scalar()
        # Ingest, normalize and contacts were unaffected; no embedding got through, and LLM insights (on,
        # since an endpoint is configured) waited too. (The beat's sweep may already be re-opening owed
        # stages as probes, which fail while the endpoint is down.)
        assert stages[0] and stages[1], stages
        assert normalized == facts.messages
        assert owed >= 1
        settings = Settings(redis_url=ai_env["MAILPIPE_BROKER_URL"])
        name = ai_breaker_name(ai_server.base_url)
        breaker = next(b for b in breaker_states(settings, engine) if b.name == name)
        assert breaker.state == "open" or breaker.opened_at is not None, breaker
        down_calls = ai_server.stats()["calls"]["embeddings"]
        assert down_calls <= 5 * 3, down_calls  # the breaker stopped the calls, not the retries running out

        ai_server.faults.update(down=False)
        deadline = time.monotonic() + 120
        while True:
            with engine.connect() as conn:
                pending = conn.execute(text("SELECT count(*) FROM messages WHERE embedded_at IS NULL")).scalar()
                open_windows = conn.execute(text("SELECT count(*) FROM windows WHERE NOT finished")).scalar()
                # A stage the half-open breaker refused is owed again (its window finished, as failed):
                # a later sweep takes it. Done means none is left.
                owed = conn.execute(text("SELECT count(*) FROM failures")).scalar()
            if pending == 0 and open_windows == 0 and owed == 0:
                break
            assert time.monotonic() < deadline, (pending, open_windows, owed,
                                                 (tmp_path / "beat.log").read_text()[-2000:])
            time.sleep(0.5)
        with engine.connect() as conn:
            failures = conn.execute(text("SELECT count(*) FROM failures")).scalar()
            without_chunks = conn.execute(text(
                "SELECT count(*) FROM messages m WHERE NOT EXISTS "
                "(SELECT 1 FROM embedding_chunks c WHERE c.message_id = m.id)")).scalar()
            models = conn.execute(text("SELECT DISTINCT model FROM embedding_chunks")).scalars().all()
            insights = dict(conn.execute(text(
                "SELECT CASE WHEN i.source LIKE 'llm:%' THEN 'llm' ELSE i.source END, count(*) "
                "FROM threads t LEFT JOIN insights i ON i.thread_id = t.id GROUP BY 1")).all())
        assert failures == 0  # the owed work was done: nothing stands as failed
        assert without_chunks == 0
        assert models == ["openai:text-embedding-3-small"]
        assert None not in insights and insights.get("llm", 0) > 0, insights  # every thread; the personal by LLM
        assert "mailpipe.sweep_enrichment" in (tmp_path / "beat.log").read_text()
    finally:
        beat.stop()
        worker.stop()


def test_an_embed_task_past_its_soft_limit_keeps_its_progress_and_the_rest_is_requeued(
        engine: Engine, ai_server: OpenAIServer, ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # A slow endpoint (0.4 s a request, 2 texts each): a 32-message slice takes ~8 s, the whole window
    # ~13 s, and the embed limit is 10.5 s: one window's embedding takes two tasks, the first keeping
    # the slice it committed.
    ai_server.faults.update(down=False, latency=0.4)
    env = {**ai_env, "MAILPIPE_WINDOW_SIZE": "60", "MAILPIPE_AI_EMBED_BATCH_SIZE": "2",
           "MAILPIPE_TIMEOUT_EMBED_BASE": "10.5", "MAILPIPE_TIMEOUT_EMBED_PER_UNIT": "0",
           "MAILPIPE_MAX_DELIVERIES": "20", "MAILPIPE_INSIGHTS": "rules"}  # embedding's limits alone
    worker = celery_worker(env, tmp_path / "worker.log", name="soft-limit")
    worker.start()
    try:
        summary = _import(env, sample_mbox)
        assert summary["status"] == "done" and summary["enrichment_owed"] == 0, summary
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Soft time limit" in log, log[-3000:]
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT (attempts->>'embed')::int FROM windows")).scalars().all()
        pending = conn.execute(text("SELECT count(*) FROM messages WHERE embedded_at IS NULL")).scalar()
        failures = conn.execute(text("SELECT count(*) FROM failures")).scalar()
        hashes = conn.execute(text("SELECT count(DISTINCT content_hash) FROM embedding_chunks")).scalar()
        without_chunks = conn.execute(text("SELECT count(*) FROM messages m WHERE NOT EXISTS "
                                           "(SELECT 1 FROM embedding_chunks c WHERE c.message_id = m.id)")).scalar()
    assert max(attempts) > 1, attempts  # re-queued at least once
    assert pending == 0 and failures == 0
    assert without_chunks == 0
    # The counter counts only committed slices: it equals the vectors stored, none counted twice.
    assert hashes == summary["chunks_embedded"]


def test_an_llm_insight_task_past_its_soft_limit_keeps_its_threads_and_the_rest_is_requeued(
        engine: Engine, ai_server: OpenAIServer, ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # A slow endpoint (0.4 s a chat call) and a 3 s insight limit: a window of 60 messages asks for more
    # threads than one task has time for, so its insights take several tasks, each keeping the threads
    # it finished. Before insight was resumable the first soft limit failed the window's stage.
    ai_server.faults.update(down=False, latency=0.4)
    env = {**ai_env, "MAILPIPE_WINDOW_SIZE": "60", "MAILPIPE_EMBEDDER": "none", "MAILPIPE_INSIGHTS": "llm",
           "MAILPIPE_TIMEOUT_INSIGHT_BASE": "3", "MAILPIPE_TIMEOUT_INSIGHT_PER_UNIT": "0",
           "MAILPIPE_MAX_DELIVERIES": "40"}
    worker = celery_worker(env, tmp_path / "worker.log", name="insight-soft-limit")
    worker.start()
    try:
        summary = _import(env, sample_mbox)
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert summary["status"] == "done" and summary["failed_windows"] == 0, (summary, log[-3000:])
    assert summary["enrichment_owed"] == 0, summary
    assert "Soft time limit" in log, log[-3000:]
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT (attempts->>'insight')::int FROM windows")).scalars().all()
        unmarked = conn.execute(text("SELECT count(*) FROM messages WHERE insight_at IS NULL")).scalar()
        failures = conn.execute(text("SELECT count(*) FROM failures")).scalar()
        insights = dict(conn.execute(text(
            "SELECT CASE WHEN i.source LIKE 'llm:%' THEN 'llm' ELSE i.source END, count(*) "
            "FROM threads t LEFT JOIN insights i ON i.thread_id = t.id WHERE t.message_count > 0 GROUP BY 1")).all())
    assert max(attempts) > 1, attempts  # re-queued at least once
    assert unmarked == 0 and failures == 0
    assert None not in insights and insights.get("llm", 0) > 0, insights


def _import_with_slow_setup(env: dict[str, str], sample_mbox: Path,
                            tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Import the sample with one worker whose insight client is built slowly (or fails) the first time in
    each process (tests/slow_setup_app.py): the import's process and the worker's log."""
    worker = celery_worker(env, tmp_path / "worker.log", name="slow-setup", app="tests.slow_setup_app")
    worker.start()
    try:
        # Well short of the 12 minutes the import waited for its stall check when such a task was lost.
        result = subprocess.run([sys.executable, "-m", "tasks.cli", "import", str(sample_mbox), "--account",
                                 "me@example.com", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
    finally:
        worker.stop()
    return result, (tmp_path / "worker.log").read_text(errors="replace")


def test_a_soft_limit_met_while_the_stage_builds_its_client_runs_the_task_again(
        engine: Engine, ai_server: OpenAIServer, ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # The first build sleeps past the 2 s limit, before the stage's work. Such a task once ended
    # acknowledged with the window's insight neither done nor failed.
    ai_server.faults.update(down=False)
    env = {**ai_env, "MAILPIPE_WINDOW_SIZE": "20", "MAILPIPE_EMBEDDER": "none", "MAILPIPE_INSIGHTS": "llm",
           "MAILPIPE_TIMEOUT_INSIGHT_BASE": "2", "MAILPIPE_TIMEOUT_INSIGHT_PER_UNIT": "0", "SLOW_SETUP_SECONDS": "4"}
    result, log = _import_with_slow_setup(env, sample_mbox, tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr[-3000:], log[-3000:])
    summary = json.loads(result.stdout)
    assert summary["status"] == "done" and summary["failed_windows"] == 0, (summary, log[-3000:])
    assert "Soft time limit (2.0s) exceeded for mailpipe.insight" in log, log[-3000:]
    with engine.connect() as conn:
        states = conn.execute(text("SELECT DISTINCT insight FROM windows")).scalars().all()
        without = conn.execute(text("SELECT count(*) FROM threads t WHERE t.message_count > 0 AND NOT EXISTS "
                                    "(SELECT 1 FROM insights i WHERE i.thread_id = t.id)")).scalar()
        by_llm = conn.execute(text("SELECT count(*) FROM insights WHERE source LIKE 'llm:%'")).scalar()
    assert states == ["done"] and without == 0 and by_llm, (states, without, by_llm)


def test_a_stage_whose_setup_always_outlasts_its_limit_fails_at_the_redelivery_cap(
        engine: Engine, ai_server: OpenAIServer, ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # Run again at once each time, such a task would loop for ever: it never reaches the claim that
    # counts deliveries. One window, a cap of 2: three tries, then the stage fails with the reason,
    # owed to the enrichment sweep as an AI stage's timeout is.
    ai_server.faults.update(down=False)
    env = {**ai_env, "MAILPIPE_WINDOW_SIZE": "60", "MAILPIPE_EMBEDDER": "none", "MAILPIPE_INSIGHTS": "llm",
           "MAILPIPE_TIMEOUT_INSIGHT_BASE": "1", "MAILPIPE_TIMEOUT_INSIGHT_PER_UNIT": "0",
           "MAILPIPE_MAX_DELIVERIES": "2", "SLOW_SETUP_SECONDS": "3", "SLOW_SETUP_ALWAYS": "1"}
    result, log = _import_with_slow_setup(env, sample_mbox, tmp_path)
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and summary["enrichment_owed"] == 1, (summary, log[-3000:])
    assert log.count("Soft time limit (1.0s) exceeded for mailpipe.insight") == 3, log[-3000:]
    with engine.connect() as conn:
        failures = conn.execute(text("SELECT stage, error_class, reason FROM failures")).all()
    assert failures == [("insight", "timeout", "soft time limit exceeded outside the stage's work, 3 times")], failures


def test_an_error_while_the_stage_builds_its_client_fails_the_stage_with_its_reason(
        engine: Engine, ai_server: OpenAIServer, ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # Every first build in a process raises: the windows that met it record why, the rest are done.
    ai_server.faults.update(down=False)
    env = {**ai_env, "MAILPIPE_WINDOW_SIZE": "20", "MAILPIPE_EMBEDDER": "none", "MAILPIPE_INSIGHTS": "llm",
           "SLOW_SETUP_ERROR": "the model's library failed to import"}
    result, log = _import_with_slow_setup(env, sample_mbox, tmp_path)
    summary = json.loads(result.stdout)  # the import exits 1: windows failed
    assert result.returncode == 1 and summary["status"] == "done" and summary["failed_windows"] >= 1, (
        summary, log[-3000:])
    with engine.connect() as conn:
        failures = conn.execute(text("SELECT stage, error_class, reason FROM failures")).all()
        states: dict[str, int] = {state: n for state, n in conn.execute(
            text("SELECT insight, count(*) FROM windows GROUP BY 1"))}
    assert failures and all(stage == "insight" and reason == "RuntimeError: the model's library failed to import"
                            for stage, _, reason in failures), failures
    assert set(states) <= {"done", "failed"} and states["failed"] == len(failures), states


def _outage_then_enrich(engine: Engine, ai_server: OpenAIServer, env: dict[str, str],
                        sample_mbox: Path) -> tuple[dict[str, Any], dict[str, Any], subprocess.CompletedProcess[str]]:
    """Import while the endpoint is down, bring it back, `mailpipe enrich` twice: the import's summary,
    the first enrich's result and the second's process."""
    summary = _import(env, sample_mbox)
    assert summary["enrichment_owed"] > 0, summary
    ai_server.faults.update(down=False)
    time.sleep(3.5)  # the breaker's reset: its next call is the half-open probe
    result = subprocess.run([sys.executable, "-m", "tasks.cli", "enrich", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    with engine.connect() as conn:
        why = conn.execute(text("SELECT stage, error_class, reason FROM failures")).all()
    assert result.returncode == 0, (result.stdout, result.stderr[-3000:], why)
    enriched: dict[str, Any] = json.loads(result.stdout)
    again = subprocess.run([sys.executable, "-m", "tasks.cli", "enrich", "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    return summary, enriched, again


def _all_enriched(engine: Engine, summary: dict[str, Any], enriched: dict[str, Any],
                  again: subprocess.CompletedProcess[str]) -> None:
    # The first round's probe closes the breaker; stages refused while it was half-open go in the next.
    assert enriched["owed"] == 0 and enriched["reason"] is None, enriched
    assert enriched["done"] >= summary["enrichment_owed"] and enriched["rounds"] >= 1, (enriched, summary)
    with engine.connect() as conn:
        without_chunks = conn.execute(text("SELECT count(*) FROM messages m WHERE NOT EXISTS "
                                           "(SELECT 1 FROM embedding_chunks c WHERE c.message_id = m.id)")).scalar()
        failures = conn.execute(text("SELECT count(*) FROM failures")).scalar()
    assert without_chunks == 0 and failures == 0
    assert again.returncode == 0 and json.loads(again.stdout)["rounds"] == 0  # nothing owed any more


def test_enrich_resumes_owed_enrichment_when_asked(engine: Engine, ai_server: OpenAIServer,
                                                   ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # No beat: only `mailpipe enrich` resumes what the outage left owed.
    env = {**ai_env, "MAILPIPE_INSIGHTS": "rules"}
    worker = celery_worker(env, tmp_path / "worker.log", name="enrich")
    worker.start()
    try:
        summary, enriched, again = _outage_then_enrich(engine, ai_server, env, sample_mbox)
    finally:
        worker.stop()
    _all_enriched(engine, summary, enriched, again)


def test_enrich_on_the_embedded_default_waits_for_its_own_pool(engine: Engine, ai_server: OpenAIServer,
                                                              ai_env: dict[str, str], sample_mbox: Path) -> None:
    # No broker: the import and each `mailpipe enrich` run a pool of their own, and enrich waits on its
    # pool's work for as long as that pool runs (it once took "no restart" for "no pool" and gave up).
    env = {k: v for k, v in ai_env.items() if k not in ("MAILPIPE_BROKER_URL", "MAILPIPE_REDIS_URL")}
    env["MAILPIPE_INSIGHTS"] = "rules"
    summary, enriched, again = _outage_then_enrich(engine, ai_server, env, sample_mbox)
    _all_enriched(engine, summary, enriched, again)
