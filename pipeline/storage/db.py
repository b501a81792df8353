"""Database connection: one engine per process, built from settings, and schema migrations."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from pipeline.settings import Settings
from pipeline.storage.embedded import start_embedded_postgres

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

_lock = threading.Lock()
_engines: dict[tuple[str, int, bool], Engine] = {}
_snapshot_binds: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def database_url(settings: Settings) -> str:
    """The URL to use: the configured one, or the embedded server's (started if needed)."""
    if settings.database_url:
        return normalize_url(settings.database_url)
    return start_embedded_postgres(settings.pgdata, shared_buffers_mb=settings.embedded_shared_buffers_mb)


def normalize_url(url: str) -> str:
    """Accept plain postgres:// URLs and point them at psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def engine_for(url: str, *, pool_size: int = 5, pre_ping: bool = True) -> Engine:
    """One engine per URL per process (workers fork: engines are made after the fork).

    `pre_ping` tests each connection as it leaves the pool (a round trip). A web server, whose requests
    are short and retried by their callers, goes without: after a database restart the first request
    on each dead connection fails (503) and the pool is refreshed.
    """
    # Keyed by the options too: `mailpipe serve` with one worker builds the web's engine (no ping, its own
    # pool size) in the process whose runtime already made the default one for the same URL, and a
    # cache keyed by URL alone handed the web that one, pinging on every checkout.
    key = (url, pool_size, pre_ping)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(url, pool_size=pool_size, max_overflow=5, pool_pre_ping=pre_ping)
            _set_statement_timeout(engine)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Drop pooled connections, e.g. in a forked child that must not share its parent's sockets."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


def _set_statement_timeout(engine: Engine) -> None:
    # A runaway query should fail the task, not hang a worker past its time limit.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        with dbapi_conn.cursor() as cur:
            cur.execute("SET statement_timeout = '300s'")
        dbapi_conn.commit()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """A read-only transaction whose statements all see one snapshot (REPEATABLE READ), for a page
    read in several statements whose parts must agree: under READ COMMITTED, PostgreSQL's default,
    each statement of a transaction takes a snapshot of its own."""
    with _lock:
        bind = _snapshot_binds.get(engine)
        if bind is None:  # made once per engine: execution_options() builds a new engine object each call
            bind = _snapshot_binds[engine] = engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def reading(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection for reads that need no transaction: each statement is its own (AUTOCOMMIT), as under
    READ COMMITTED, without a session's BEGIN and COMMIT (a one-statement page read in process: 0.47
    against 0.9 ms, ad-hoc at 1M). Given a Connection, that one: the web API checks a token and reads
    a page on one."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


# The revision migrations/versions ends at (test_migrations checks it against Alembic's). A schema
# already there is left alone without loading Alembic and its scripts: ~0.05 s against ~0.17 s of every
# command's and every worker's start (ad-hoc, a fresh process; docs/PERFORMANCE.md, tenth round).
HEAD_REVISION = "0015"


def schema_revision(url: str) -> str | None:
    """The revision the database's schema is at (Alembic's version table), or None before any."""
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one()
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() if exists else None
    finally:
        engine.dispose()


def migrate(url: str) -> bool:
    """Bring the schema to head; returns whether it was below (an upgrade ran, here or in a concurrent
    caller). Concurrent callers serialize on an advisory lock in env.py.

    Checked first without the lock: Alembic writes the version in the transaction of the migration's
    own changes, so a schema at HEAD_REVISION has all of them."""
    if schema_revision(url) == HEAD_REVISION:
        return False
    from alembic import command

    command.upgrade(alembic_config(url), "head")
    return True
