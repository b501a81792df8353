"""An AI outage end to end: real CLI, worker and beat processes, the openai client against the project's
server. While the endpoint is down ingest, normalize and contacts finish and the run completes; the
breaker opens; once the endpoint is back the beat's sweep resumes the enrichment without anyone acting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.resilience.breakers import ai_breaker_name, breaker_states
from pipeline.settings import Settings
from pipeline.testing.openai_server import Faults, OpenAIServer
from tests.conftest import REDIS_URL, delete_redis_prefix
from tests.oracle import mbox_facts

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def _other_db(url: str) -> str:
    """The test Redis, another database: this test's broker must not feed the session's worker."""
    base, _, db = url.rpartition("/")
    return f"{base}/{(int(db) - 3) % 16 if db.isdigit() else 12}"  # 15 → 12 (13 is the quota bench's)


class _Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str) -> None:
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", *args], cwd=ROOT, env=env,
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while ready not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


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
    worker = _Process(["worker", "-Q", "ingest,normalize,ai", "-c", "2", "--pool", "prefork", "-l", "INFO",
                       "-n", f"ai-outage-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                      ai_env, tmp_path / "worker.log", ready="ready.")
    beat = _Process(["beat", "-s", str(tmp_path / "beat-schedule"), "-l", "INFO", "--max-interval", "1"],
                    ai_env, tmp_path / "beat.log", ready="beat: Starting")
    try:
        # The endpoint is down for the whole import.
        result = subprocess.run([sys.executable, "-m", "tasks.cli", "import", str(sample_mbox), "--account",
                                 "me@example.com", "--json"], cwd=ROOT, env=ai_env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout)
        facts = mbox_facts(sample_mbox)
        assert summary["status"] == "done" and summary["new_messages"] == facts.messages, summary
        assert summary["chunks_embedded"] == 0 and summary["failed_windows"] == 0
        assert summary["enrichment_owed"] > 0  # not a failure (exit 0): owed, and said so
        with engine.connect() as conn:
            stages = conn.execute(text(
                "SELECT bool_and(ingest = 'done' AND normalize = 'done' AND contacts = 'done' AND insight = 'done'), "
                "bool_and(embed <> 'done'), count(*) FROM windows")).one()
            normalized = conn.execute(text("SELECT count(*) FROM messages WHERE normalized_at IS NOT NULL")).scalar()
            owed = conn.execute(text("SELECT count(*) FROM failures WHERE stage = 'embed' AND item_ref = 'window' "
                                     "AND error_class = 'transient'")).scalar()
        # Ingest, normalize, contacts and the rules were unaffected; no embedding got through. (The beat's
        # sweep may already be re-opening owed stages as probes, which fail while the endpoint is down.)
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
            if pending == 0 and open_windows == 0:
                break
            assert time.monotonic() < deadline, (pending, open_windows, (tmp_path / "beat.log").read_text()[-2000:])
            time.sleep(0.5)
        with engine.connect() as conn:
            failures = conn.execute(text("SELECT count(*) FROM failures")).scalar()
            without_chunks = conn.execute(text(
                "SELECT count(*) FROM messages m WHERE NOT EXISTS "
                "(SELECT 1 FROM embedding_chunks c WHERE c.message_id = m.id)")).scalar()
            models = conn.execute(text("SELECT DISTINCT model FROM embedding_chunks")).scalars().all()
        assert failures == 0  # the owed work was done: nothing stands as failed
        assert without_chunks == 0
        assert models == ["openai:text-embedding-3-small"]
        assert "mailpipe.sweep_enrichment" in (tmp_path / "beat.log").read_text()
    finally:
        beat.stop()
        worker.stop()


def test_an_embed_task_past_its_soft_limit_keeps_its_progress_and_the_rest_is_requeued(
        engine: Engine, ai_server: OpenAIServer, ai_env: dict[str, str], sample_mbox: Path, tmp_path: Path) -> None:
    # A slow endpoint (0.25 s a request, 1 text each: ~15 s for the window) and an 8 s embed limit:
    # one window's embedding takes several tasks, each keeping the slices it committed.
    ai_server.faults.update(down=False, latency=0.25)
    env = {**ai_env, "MAILPIPE_WINDOW_SIZE": "60", "MAILPIPE_AI_EMBED_BATCH_SIZE": "1",
           "MAILPIPE_TIMEOUT_EMBED_BASE": "8", "MAILPIPE_TIMEOUT_EMBED_PER_UNIT": "0", "MAILPIPE_MAX_DELIVERIES": "20"}
    worker = _Process(["worker", "-Q", "ingest,normalize,ai", "-c", "2", "--pool", "prefork", "-l", "INFO",
                       "-n", f"soft-limit-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                      env, tmp_path / "worker.log", ready="ready.")
    try:
        result = subprocess.run([sys.executable, "-m", "tasks.cli", "import", str(sample_mbox), "--account",
                                 "me@example.com", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout)
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
