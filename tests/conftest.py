"""Fixtures for real resources: an embedded PostgreSQL with pgvector, Redis, a Celery worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from pipeline.testing.gmail_server import GmailServer

REDIS_URL = os.environ.get("MAILPIPE_TEST_REDIS", "redis://127.0.0.1:6379/15")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from pipeline.storage.db import migrate
    from pipeline.storage.embedded import start_embedded_postgres, stop_embedded_postgres

    # Outside pytest's 0700 temp tree: the server runs as its own system user when we are root.
    folder = Path(tempfile.mkdtemp(prefix="mailpipe-test-pg-"))
    url = start_embedded_postgres(folder / "data")
    migrate(url)
    yield url
    # Stopped and deleted with the session: every run left its cluster (40-140 MB) in /tmp.
    stop_embedded_postgres(folder / "data")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def empty_database(pg_url: str) -> Iterator[str]:
    """A database of its own on the session's server, without a schema (migrations are run on it)."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def gmail_server() -> Iterator[GmailServer]:
    """One Gmail-compatible server for the session (the worker's settings name its URL)."""
    from pipeline.testing.gmail_mailbox import FakeMailbox
    from pipeline.testing.gmail_server import GmailServer

    server = GmailServer(FakeMailbox("me@example.com"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mailpipe_env(pg_url: str, gmail_server: GmailServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every process of the test session shares (this one and the worker's)."""
    from pipeline.credentials import new_key

    env = {
        "MAILPIPE_SECRET_KEY": new_key(),
        "MAILPIPE_GMAIL_API_URL": gmail_server.base_url,
        "MAILPIPE_GMAIL_TIMEOUT": "10",
        "MAILPIPE_DATABASE_URL": pg_url,
        "MAILPIPE_BROKER_URL": REDIS_URL,
        "MAILPIPE_HOME": str(tmp_path_factory.mktemp("home")),
        "MAILPIPE_WINDOW_SIZE": "50",
        "MAILPIPE_WINDOWS_IN_FLIGHT": "3",
        "MAILPIPE_WORKER_CONCURRENCY": "2",
        "MAILPIPE_BREAKER_RESET_SECONDS": "3",  # an outage test waits out the open breaker
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update(env)
    from pipeline.settings import get_settings
    from tasks import context

    get_settings.cache_clear()
    context.resolved_database_url.cache_clear()
    return env


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """The test database, emptied before each test."""
    from pipeline.storage.db import engine_for
    from pipeline.storage.models import Base

    eng = engine_for(pg_url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with eng.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield eng


@pytest.fixture(scope="session")
def redis_broker(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


class CeleryProcess:
    """A real `celery -A tasks <command>` subprocess (worker or beat), in its own process group.

    Ready when its log shows `ready` (a worker's "ready.", beat's "beat: Starting"): that works whatever
    broker its environment names, unlike a control ping from this process's app.
    """

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str,
                 program: tuple[str, ...] = ("-m", "celery", "-A", "tasks")) -> None:
        self.args, self.ready, self.program = args, ready, program  # program: e.g. ("-m", "tasks.cli") for mailpipe
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        seen = len(self.log.read_text(errors="replace")) if self.log.exists() else 0
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, *self.program, *self.args], cwd=ROOT,
                                         env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.ready not in self.log.read_text(errors="replace")[seen:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery {self.args[0]} did not start; log: "
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole process group (a worker's main process and its children), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(check: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def celery_worker(env: dict[str, str], log: Path, name: str = "test", app: str = "tasks") -> CeleryProcess:
    """A prefork worker on every stage queue (not started); `app`: the module `celery -A` loads."""
    return CeleryProcess(["worker", "-Q", "ingest,normalize,ai", "-c", env.get("MAILPIPE_WORKER_CONCURRENCY", "2"),
                          "--pool", "prefork", "-l", "INFO", "-n", f"{name}-{time.time_ns()}@%h",
                          "--without-gossip", "--without-mingle"], env, log, ready="ready.",
                         program=("-m", "celery", "-A", app))


@pytest.fixture(scope="session")
def worker(mailpipe_env: dict[str, str], redis_broker: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryProcess]:
    proc = celery_worker(mailpipe_env, tmp_path_factory.mktemp("worker") / "worker.log")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def sample_mbox() -> Path:
    return ROOT / "pipeline" / "samples" / "sample.mbox"


def delete_redis_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis, which other test sessions share: never flushed here; each test uses its own prefix."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis must answer at {REDIS_URL} (.ci/run starts it): {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    prefix = f"test:{request.module.__name__.rsplit('.', 1)[-1]}:{uuid.uuid4().hex}:"
    yield prefix
    delete_redis_prefix(redis_url, prefix)
