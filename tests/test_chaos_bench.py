"""What bench/chaos.py relies on, in seconds: the driver outlives short outages of the database and the
broker, a Redis restart keeps queued tasks only with its append-only file, and a PostgreSQL restarted
by the bench comes back at the same URL with its committed rows."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from pipeline.driver import DriveOptions, Driver, patiently
from pipeline.records import RawMessage
from pipeline.runs import begin_run, ensure_account, maybe_finish_run


def _outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception('connection to server on socket "x" failed'))


def test_patiently_waits_out_a_database_outage_and_nothing_else() -> None:
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise _outage()
        return 42

    assert patiently(flaky, pause=0.01) == 42 and len(calls) == 3

    def broken() -> int:
        calls.append(1)
        raise ValueError("a bug")

    calls.clear()
    with pytest.raises(ValueError):
        patiently(broken, pause=0.01)
    assert len(calls) == 1  # not a transient error: raised at once

    def down() -> int:
        raise _outage()

    with pytest.raises(OperationalError):
        patiently(down, patience=0.05, pause=0.01)  # an outage longer than the patience ends the call


def test_a_window_whose_chain_could_not_be_sent_is_sent_again(engine: Engine) -> None:
    account = ensure_account(engine, "me@example.com", [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    sent: list[int] = []
    refusals = [2]  # the broker is down for the first two sends

    def dispatch(window_id: int) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        sent.append(window_id)
        with engine.begin() as conn:  # the workers' part: every stage done
            conn.execute(text("UPDATE windows SET ingest = 'done', normalize = 'done', contacts = 'done', "
                              "embed = 'done', insight = 'done', finished = true WHERE id = :id"), {"id": window_id})
        maybe_finish_run(engine, run)

    driver = Driver(engine, run, DriveOptions(window_size=1, windows_in_flight=5, poll_seconds=0.05), dispatch)
    driver.feed([RawMessage(f"offset:{i}", b"Subject: x\n\nhi\n") for i in range(3)])
    progress = driver.wait(timeout=30)
    with engine.connect() as conn:
        windows = sorted(conn.execute(text("SELECT id FROM windows WHERE run_id = :r"), {"r": run}).scalars())
    assert progress.status == "done"
    assert sorted(sent) == windows and len(windows) == 3  # each sent once it could be, none twice


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.parametrize(("persistent", "kept"), [(True, 2), (False, 0)])
def test_a_redis_restart_keeps_queued_tasks_only_with_its_append_only_file(
    tmp_path: Path, persistent: bool, kept: int
) -> None:
    from bench.chaos import RedisProcess

    server = RedisProcess(tmp_path / "redis", persistent)
    server.start()
    try:
        redis.Redis(port=server.port).rpush("ingest", b"task-1", b"task-2")
        server.stop()
        server.start()
        assert redis.Redis(port=server.port).llen("ingest") == kept
    finally:
        server.stop()


def test_a_postgres_crash_and_restart_keeps_the_url_and_committed_rows() -> None:
    from bench.chaos import PostgresProcess
    from pipeline.storage.db import engine_for

    # Outside pytest's 0700 temp tree: the server runs as its own system user when we are root.
    folder = Path(tempfile.mkdtemp(prefix="mailpipe-test-chaos-pg-"))
    server = PostgresProcess(folder / "data")
    try:
        engine = engine_for(server.url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE kept (n int)"))
            conn.execute(text("INSERT INTO kept VALUES (1)"))
        server.stop("immediate")
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        server.start()  # raises if the URL changed
        with engine.connect() as conn:  # the pool's dead connections are replaced (pool_pre_ping)
            assert conn.execute(text("SELECT n FROM kept")).scalar_one() == 1
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_worker_logs_say_what_ended_a_main_process(tmp_path: Path) -> None:
    from bench.chaos import _log_counts

    (tmp_path / "worker-1.log").write_text(
        "[2026-12-07 20:55:01,002: CRITICAL/MainProcess] Unrecoverable error: OperationalError('Error 111 "
        "connecting to 127.0.0.1:6379. Connection refused.')\n"
        "[2026-12-07 20:55:03,000: INFO/ForkPoolWorker-1] Task mailpipe.ingest[1] retry: Retry in 1s\n")
    (tmp_path / "worker-2.log").write_text(
        "[2026-12-07 20:56:00,000: CRITICAL/MainProcess] Unrecoverable error: WorkerLostError('Could not start "
        "worker processes')\n"
        "Traceback (most recent call last):\n"
        '  File "/opt/venv/lib/python3.11/site-packages/celery/worker/worker.py", line 203, in start\n'
        "    self.blueprint.start(self)\n"
        '  File "/opt/venv/lib/python3.11/site-packages/celery/bootsteps.py", line 116, in start\n'
        "    step.start(parent)\n"
        '  File "/opt/venv/lib/python3.11/site-packages/billiard/pool.py", line 1046, in __init__\n'
        "    self._create_worker_process(i)\n"
        '  File "/opt/venv/lib/python3.11/site-packages/billiard/pool.py", line 1158, in _create_worker_process\n'
        "    raise WorkerLostError('Could not start worker processes')\n"
        "billiard.exceptions.WorkerLostError: Could not start worker processes\n"
        "[2026-12-07 20:56:01,000: INFO/MainProcess] Task mailpipe.ingest[2] received\n"
        '  File "/elsewhere.py", line 1, in not_this\n')
    counts = _log_counts(tmp_path)
    assert counts["unrecoverable"] == 2 and counts["pool_start_failed"] == 1 and counts["task_retry"] == 1
    assert counts["unrecoverable_errors"] == {
        "OperationalError('Error 111 connecting to 127.0.0.1:6379. Connection refused.')": 1,
        "WorkerLostError('Could not start worker processes')": 1}
    assert counts["unrecoverable_raised_at"] == {
        "no traceback": 1,  # the first log has none
        "billiard/pool.py:1158 _create_worker_process < billiard/pool.py:1046 __init__ < "
        "celery/bootsteps.py:116 start": 1}
