"""Two windows of one account ingesting some of the same messages at once: one waits for the other, and
neither is chosen as a deadlock's victim (each window's messages are upserted in key order)."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from pipeline.records import RawMessage
from pipeline.runs import StageClaim, add_window, begin_run
from pipeline.stages.ingest import ingest_window
from tests.conftest import wait_for


def _window(engine: Engine, run_id: int, seq: int, keys: list[str]) -> int:
    """A window of `keys`' messages, in that order, saved as the driver saves it and not yet ingested."""
    return add_window(engine, run_id, seq, [RawMessage(f"{seq}:{key}", f"Message-ID: <{key}@example.com>\r\n"
                                                       f"Subject: {key}\r\n\r\nbody {key}\r\n".encode())
                                            for key in keys])


def _blocked_sessions(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalar_one())


def test_two_windows_with_the_same_messages_in_opposite_orders_do_not_deadlock(engine: Engine) -> None:
    with engine.begin() as conn:
        account_id = conn.execute(text("INSERT INTO accounts (email) VALUES ('me@example.com') RETURNING id")
                                  ).scalar_one()
    run_id = begin_run(engine, account_id, "full", "mbox", stale_seconds=600)
    # Each window holds a message the other also holds, with a third (c) between them, in the other order.
    first = _window(engine, run_id, 1, ["a", "c", "b"])
    second = _window(engine, run_id, 2, ["b", "c", "a"])
    holder = _window(engine, run_id, 3, ["c"])

    # A third transaction holds c, so that both windows are inside their upsert, each waiting on c, when it
    # lets go; in window order each would then hold a key the other waits for.
    held = Session(engine)
    ingest_window(held, _claim(holder, run_id, account_id))
    errors: list[BaseException] = []

    def ingest(window_id: int) -> None:
        try:
            with Session(engine) as s, s.begin():
                ingest_window(s, _claim(window_id, run_id, account_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=ingest, args=(w,)) for w in (first, second)]
    try:
        for w in workers:
            w.start()
        wait_for(lambda: _blocked_sessions(engine) >= 2, "both windows waiting on the held message", timeout=30)
    finally:  # let go whatever happened, or the windows (and the next test's TRUNCATE) wait on it for ever
        held.rollback()
        held.close()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)

    assert errors == []
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT rfc_message_id FROM messages ORDER BY 1")).scalars().all()
        outcomes = conn.execute(text("SELECT outcome, count(*) FROM window_items WHERE window_id IN (:f, :s) "
                                     "GROUP BY outcome ORDER BY 1"), {"f": first, "s": second}).all()
    assert keys == ["a@example.com", "b@example.com", "c@example.com"]
    assert [tuple(r) for r in outcomes] == [("duplicate", 3), ("new", 3)]


def _claim(window_id: int, run_id: int, account_id: int) -> StageClaim:
    return StageClaim(window_id, run_id, account_id, attempts=1, upstream_state=None)
