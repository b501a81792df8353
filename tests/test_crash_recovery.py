"""SIGKILL a worker mid-import, then import again: every message exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.oracle import mbox_facts
from tests.test_import_integration import _import, _scalar, assert_counters_match_rows

pytestmark = pytest.mark.integration


def test_worker_sigkill_then_reimport_keeps_every_message_once(
    engine: Engine, worker, mailpipe_env: dict[str, str], tmp_path: Path
) -> None:
    from bench.generate import generate_mbox

    path = tmp_path / "crash.mbox"
    generate_mbox(path, 800, seed=11)
    facts = mbox_facts(path)
    env = {**os.environ, **mailpipe_env}
    first = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "import", str(path), "--account", "me@example.com", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        _wait_until(lambda: _scalar(engine, "SELECT count(*) FROM messages") >= 150, timeout=180)
        worker.kill()  # the whole worker, mid-import: unacknowledged tasks are lost to it
        first.kill()  # and the driver, so the run is left behind as a crash leaves it
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
        worker.start()

    partial = _scalar(engine, "SELECT count(*) FROM messages")
    assert 0 < partial < facts.messages, "the crash must land mid-import for this test to mean anything"

    summary = _import(engine, path)

    assert _scalar(engine, "SELECT count(*) FROM messages") == facts.messages
    assert _scalar(engine, "SELECT count(DISTINCT message_key) FROM messages") == facts.messages
    assert summary.new_messages + partial == facts.messages
    assert _scalar(engine, "SELECT count(*) FROM messages WHERE normalized_at IS NULL OR contacts_at IS NULL "
                           "OR embedded_at IS NULL OR insight_at IS NULL") == 0
    assert _scalar(engine, "SELECT count(*) FROM (SELECT message_id, content_hash FROM embedding_chunks "
                           "GROUP BY 1, 2 HAVING count(*) > 1) d") == 0
    assert _scalar(engine, "SELECT count(*) FROM sync_runs WHERE status = 'abandoned'") == 1
    assert_counters_match_rows(engine)
    with engine.connect() as conn:
        statuses = [r[0] for r in conn.execute(text("SELECT status FROM sync_runs ORDER BY id"))]
    assert statuses == ["abandoned", "done"]


def _wait_until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")
