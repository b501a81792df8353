"""Engines per process (pipeline.storage.db)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from pipeline.storage.db import engine_for, reading, snapshot, transaction

URL = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: creating an engine opens nothing


def test_an_engine_is_shared_only_by_callers_asking_for_the_same_options() -> None:
    default = engine_for(URL)
    web = engine_for(URL, pool_size=7, pre_ping=False)
    # `mailpipe serve` made the default engine first, then the web's: the web got the pinging one.
    assert web is not default
    assert web.pool._pre_ping is False and default.pool._pre_ping is True  # type: ignore[attr-defined]
    assert web.pool.size() == 7  # type: ignore[attr-defined]
    assert engine_for(URL, pool_size=7, pre_ping=False) is web and engine_for(URL) is default


def _add_account(engine: Engine, email: str) -> None:
    with engine.begin() as conn:  # another connection: committed before the reader's next statement
        conn.execute(text("INSERT INTO accounts (email, kind) VALUES (:e, 'mbox')"), {"e": email})


def _accounts(s: object) -> int:
    return int(s.execute(text("SELECT count(*) FROM accounts")).scalar_one())  # type: ignore[attr-defined]


def test_a_snapshot_does_not_see_what_commits_between_its_statements(engine: Engine) -> None:
    with snapshot(engine) as s:
        before = _accounts(s)
        _add_account(engine, "late@example.com")
        assert _accounts(s) == before  # one snapshot for the whole page
    with transaction(engine) as s:  # READ COMMITTED, by contrast, takes a snapshot per statement
        before = _accounts(s)
        _add_account(engine, "later@example.com")
        assert _accounts(s) == before + 1


def test_a_snapshot_is_read_only(engine: Engine) -> None:
    with pytest.raises(DBAPIError, match="read-only transaction"), snapshot(engine) as s:
        s.execute(text("INSERT INTO accounts (email, kind) VALUES ('x@example.com', 'mbox')"))


def test_reading_runs_each_statement_outside_a_transaction(engine: Engine) -> None:
    with reading(engine) as conn:
        assert not conn.in_transaction()
        # now() is the transaction's start: it moves between statements only when each is its own.
        first = conn.execute(text("SELECT now()")).scalar_one()
        conn.execute(text("SELECT pg_sleep(0.01)"))
        assert conn.execute(text("SELECT now()")).scalar_one() > first
        with reading(conn) as same:  # a connection given is the one used
            assert same is conn
