"""A worker rides out a Redis restart while it holds tasks in flight (tasks.broker_connection)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from bench.chaos import RedisProcess
from tests.conftest import CeleryProcess, celery_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", persistent=True)  # queued messages survive its restart
    server.start()
    yield server
    server.stop()


def test_a_worker_holding_tasks_keeps_running_through_a_redis_restart(
        mailpipe_env: dict[str, str], private_redis: RedisProcess, tmp_path: Path) -> None:
    env = {**mailpipe_env, "MAILPIPE_BROKER_URL": private_redis.url, "MAILPIPE_WORKER_CONCURRENCY": "2"}
    worker: CeleryProcess = celery_worker(env, tmp_path / "worker.log", name="broker-restart",
                                          app="tests.slow_task_app")
    worker.start()
    client = Celery("test-client", broker=private_redis.url)
    folder = str(tmp_path)
    try:
        # One task for two pool children: the worker holds it unacknowledged (acks_late) and, below its
        # prefetch limit, waits on Redis for more (a BRPOP in flight) when Redis goes away. At the limit,
        # with nothing pending, the first close of the lost channel succeeded and nothing broke.
        client.send_task("tests.write_pid_after", args=[folder, "held", 4.0], queue="ingest")
        wait_for(lambda: (tmp_path / "held.started").exists(), "the task to start", timeout=60)
        private_redis.stop()
        time.sleep(3)
        private_redis.start()  # same port and folder
        wait_for(lambda: (tmp_path / "held").exists(), "the task in flight to finish", timeout=60)
        log = worker.log.read_text(errors="replace")
        assert "Connection to broker lost" in log  # the worker did see Redis go
        # kombu 5.7's second close of the lost connection's channel used to end the main process here.
        assert "Unrecoverable error" not in log, log[log.find("Unrecoverable error"):][:3000]
        assert worker.proc is not None and worker.proc.poll() is None
        # ...and it still takes work from the restarted Redis.
        client.send_task("tests.write_pid_after", args=[folder, "after", 0.0], queue="ingest")
        wait_for(lambda: (tmp_path / "after").exists(), "a task sent after the restart to run", timeout=60)
    finally:
        client.close()
        worker.stop()
