"""`mailpipe worker`: a pool kept running for a data folder, to which later commands hand their work."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.errors import ConfigError
from tasks.workers import STANDING_LOCK, find_standing_worker, standing_lock
from tests.conftest import wait_for
from tests.oracle import mbox_facts

ROOT = Path(__file__).resolve().parents[1]
BROKER = "sqla+postgresql+psycopg://nowhere/test"

# Holds the data folder's lock as `mailpipe worker` does, with no pool behind it: nothing consumes.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.settings import Settings
from pipeline.storage.db import database_url
from tasks.config import broker_url_for
from tasks.workers import standing_lock
s = Settings()
broker = sys.argv[1] if len(sys.argv) > 1 else broker_url_for(s, database_url(s))
with standing_lock(s.home, broker, 1, s.home / "logs" / "worker.log"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_names_the_worker_only_while_it_is_held(tmp_path: Path) -> None:
    assert find_standing_worker(tmp_path, BROKER) is None
    with standing_lock(tmp_path, BROKER, 2, tmp_path / "worker.log") as me:
        found = find_standing_worker(tmp_path, BROKER)
        assert found == me and found.pid == os.getpid() and found.concurrency == 2 and found.running()
        assert find_standing_worker(tmp_path, "redis://elsewhere/0") is None  # another broker's work is not its own
        with pytest.raises(ConfigError, match=f"already running for {tmp_path} \\(pid {os.getpid()}\\)"), \
                standing_lock(tmp_path, BROKER, 1, tmp_path / "worker.log"):
            pytest.fail("a second worker must not take a held lock")
        assert find_standing_worker(tmp_path, BROKER) == me  # the refused one left it as it was
    assert find_standing_worker(tmp_path, BROKER) is None and not me.running()
    assert not (tmp_path / STANDING_LOCK).exists()


def test_a_killed_worker_leaves_no_lock_behind(tmp_path: Path) -> None:
    env = {**os.environ, "MAILPIPE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, BROKER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        found = find_standing_worker(tmp_path, BROKER)
        assert found is not None and found.pid == holder.pid and found.running()
    finally:
        holder.kill()  # no cleanup of its own: the file stays, the kernel drops the lock
        holder.wait()
    assert (tmp_path / STANDING_LOCK).exists()
    assert not found.running() and find_standing_worker(tmp_path, BROKER) is None


def _embedded_env(mailpipe_env: dict[str, str], home: Path) -> dict[str, str]:
    """No broker: the CLI's workers are a `mailpipe worker`'s or its own, on the SQL broker."""
    env = {k: v for k, v in {**os.environ, **mailpipe_env}.items()
           if k not in ("MAILPIPE_BROKER_URL", "MAILPIPE_REDIS_URL")}
    env.update({"MAILPIPE_HOME": str(home), "MAILPIPE_EMBEDDER": "none", "MAILPIPE_WORKER_LOG_LEVEL": "INFO",
                "MAILPIPE_WORKER_CONCURRENCY": "2", "PYTHONPATH": str(ROOT)})
    return env


def _import(env: dict[str, str], mbox: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tasks.cli", "import", str(mbox), "--account", "me@example.com",
                             "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(proc: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """The import's summary, and what it said on stderr."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    summary: dict[str, Any] = json.loads(out)
    return summary, err


def _pools_ready(log: Path) -> list[int]:
    """The pid of the command that started each pool that came up, from the nodes' names in the log."""
    return [int(pid) for pid in re.findall(r"mailpipe-cli-(\d+)@\S+ ready\.", log.read_text(errors="replace"))]


def _pools_started(log: Path) -> set[int]:
    """The pid of the command behind every pool that wrote to the log at all (its banner names it)."""
    return {int(pid) for pid in re.findall(r"mailpipe-cli-(\d+)@", log.read_text(errors="replace"))}


@pytest.mark.integration
def test_an_import_hands_its_work_to_the_running_worker(engine: Engine, mailpipe_env: dict[str, str],
                                                        sample_mbox: Path, tmp_path: Path) -> None:
    env = _embedded_env(mailpipe_env, tmp_path / "home")
    log = tmp_path / "home" / "logs" / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "tasks.cli", "worker", "-c", "1"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.exists() and _pools_ready(log) or worker.poll() is not None, "the worker's pool")
        assert worker.poll() is None, worker.communicate()[1][-3000:]
        summary, said = _finished(_import(env, sample_mbox))
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, worker_err = worker.communicate(timeout=60)
    assert summary["status"] == "done" and summary["new_messages"] == mbox_facts(sample_mbox).messages, summary
    assert f"handing the work to the running mailpipe worker (pid {worker.pid}" in said
    assert _pools_ready(log) == [worker.pid] and _pools_started(log) == {worker.pid}  # the import started none
    assert re.search(r"Task mailpipe\.insight\[\S+\] succeeded", log.read_text())
    assert worker.returncode == 0, worker_err[-3000:]
    assert "stopping the worker pool" in worker_err
    assert find_standing_worker(tmp_path / "home", "sqla+" + mailpipe_env["MAILPIPE_DATABASE_URL"]) is None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == summary["new_messages"]


@pytest.mark.integration
def test_an_import_whose_worker_goes_away_starts_a_pool_of_its_own(engine: Engine, mailpipe_env: dict[str, str],
                                                                   sample_mbox: Path, tmp_path: Path) -> None:
    env = _embedded_env(mailpipe_env, tmp_path / "home")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    importing = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        importing = _import(env, sample_mbox)

        def dispatched() -> bool:  # windows sent, to a worker that takes none of them
            with engine.connect() as conn:
                return bool(conn.execute(text("SELECT count(*) FROM windows")).scalar())

        wait_for(lambda: dispatched() or importing.poll() is not None, "the import's first window")
        assert importing.poll() is None
        time.sleep(1.0)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == 0  # nothing did the work yet
    finally:
        holder.kill()  # gone as a crash leaves it: lock file in place, lock released
        holder.wait()
    summary, said = _finished(importing)
    assert summary["status"] == "done" and summary["new_messages"] == mbox_facts(sample_mbox).messages, summary
    assert f"running mailpipe worker (pid {holder.pid}" in said  # it was handed the work first
    assert _pools_ready(tmp_path / "home" / "logs" / "worker.log") == [importing.pid]
