"""The shared-state Redis (quota, breakers, concurrency): its outages are transient, and short ones are ridden out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from bench.chaos import RedisProcess, _free_port
from pipeline.resilience.classify import TRANSIENT, classify
from pipeline.resilience.quota import RedisQuotaBudget
from pipeline.resilience.shared_redis import shared_redis_client


def test_a_refused_redis_connection_is_transient() -> None:
    # redis-py's ConnectionError is not the builtin one; classified by its type alone it was "permanent".
    client = redis.Redis(port=_free_port(), socket_connect_timeout=0.5, retry=None)
    with pytest.raises(redis.ConnectionError) as caught:
        client.ping()
    assert not isinstance(caught.value, ConnectionError)
    assert classify(caught.value) == TRANSIENT


def test_a_redis_read_timeout_is_transient(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.05, retry=None)
    with pytest.raises(redis.TimeoutError) as caught:
        client.blpop(["mailpipe:test:never-pushed"], timeout=1)
    assert classify(caught.value) == TRANSIENT


@pytest.mark.integration
def test_the_shared_client_rides_out_a_redis_restart(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis", persistent=False)
    server.start()
    try:
        budget = RedisQuotaBudget(shared_redis_client(server.url), rate_per_second=1000.0, capacity=100.0)
        budget.acquire("account:restart", 1)
        server.stop()
        restarted = threading.Timer(3.0, server.start)
        restarted.start()
        began = time.monotonic()
        budget.acquire("account:restart", 1)  # sent while the server is down: retried until it is back
        waited = time.monotonic() - began
        restarted.join()
        assert waited >= 2.0, "the call cannot have succeeded before the server came back"
        assert budget.snapshot("account:restart") is not None
    finally:
        server.stop()
