"""tasks.app's worker signals: what a worker's children do when they start."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL, CeleryProcess

pytestmark = pytest.mark.integration


def _idle_broker() -> str:
    """Another database of the test Redis that nothing publishes to: this worker must take no task."""
    base, _, db = REDIS_URL.rpartition("/")
    return f"{base}/{(int(db) - 4) % 16 if db.isdigit() else 11}"  # 15 → 11 (10, 12 and 13 are taken)


def _worker(env: dict[str, str], log: Path, queues: str) -> CeleryProcess:
    return CeleryProcess(["worker", "-Q", queues, "-c", "2", "--pool", "prefork", "-l", "INFO",
                          "-n", f"init-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                         env, log, ready="ready.")


def test_children_that_embed_load_the_model_before_their_first_task(mailpipe_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    broker = _idle_broker()
    redis.Redis.from_url(broker).flushdb()
    env = {**mailpipe_env, "MAILPIPE_BROKER_URL": broker, "MAILPIPE_EMBEDDER": "local"}
    embeds, other = _worker(env, tmp_path / "ai.log", "ai"), _worker(env, tmp_path / "ingest.log", "ingest")
    embeds.start()
    other.start()
    try:
        deadline = time.monotonic() + 60
        while len(set(re.findall(r"ForkPoolWorker-(\d+)\] embedding model loaded in",
                                 (tmp_path / "ai.log").read_text()))) < 2:
            assert time.monotonic() < deadline, (tmp_path / "ai.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        embeds.stop()
        other.stop()
    for log in (tmp_path / "ai.log", tmp_path / "ingest.log"):
        text = log.read_text()
        assert " received" not in text  # no task came: each child loaded it as it started
        assert "could not load the embedding model" not in text
    assert "embedding model loaded" not in (tmp_path / "ingest.log").read_text()  # a worker that never embeds
