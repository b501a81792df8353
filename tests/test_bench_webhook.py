"""The web hook bench at a tiny size: a real `mailpipe serve`, the open-loop generator, the coalescing check."""

from __future__ import annotations

import pytest

from bench.webhook import run
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def _own_db(url: str) -> str:
    """A Redis database of this test's own: the bench flushes it (the session worker's is left alone)."""
    base, _, db = url.rpartition("/")
    return f"{base}/{(int(db) - 5) % 16 if db.isdigit() else 10}"


def test_the_webhook_bench_answers_every_trigger_with_one_run_per_account() -> None:
    data = run(rate=40.0, seconds=2.0, accounts=3, workers=1, connections=4, broker=_own_db(REDIS_URL))
    load = data["load"]
    assert load["sent"] == 80 and load["answered_202"] == 80 and load["errors"] == {}
    assert 0 < load["p50_ms"] <= load["p95_ms"] <= load["p99_ms"] <= load["max_ms"]
    assert data["coalescing"] == {"runs_per_account": [1], "tasks_per_account": [1]}
    assert data["cpu"]["cpu_seconds"]["web server"] > 0
