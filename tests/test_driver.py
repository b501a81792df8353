"""The driver's back-pressure: how many windows of a run it lets out at once."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, text

from pipeline.driver import DriveOptions, Driver
from pipeline.records import RawMessage
from pipeline.runs import WindowBacklog, begin_run, ensure_account, window_backlog


def _ingest_when_two_wait(engine: Engine, run_id: int, seen: list[WindowBacklog], stop: threading.Event) -> None:
    """The workers' part, ingest only: the oldest pending window, once two are pending and the driver has
    seen every window it made (so what it lets out does not depend on how fast this runs); none finishes
    its chain."""
    while not stop.is_set():
        time.sleep(0.01)
        with engine.begin() as conn:
            made, waiting = conn.execute(text("SELECT count(*), count(*) FILTER (WHERE ingest = 'pending') "
                                              "FROM windows WHERE run_id = :r"), {"r": run_id}).one()
            if made == len(seen) and waiting >= 2:
                conn.execute(text("UPDATE windows SET ingest = 'done' WHERE id = (SELECT min(id) FROM windows "
                                  "WHERE run_id = :r AND ingest = 'pending')"), {"r": run_id})


# Without the bound nothing is ingested: the driver must let all six out on its own.
@pytest.mark.parametrize(("before_ingest", "ingesting", "pending"), [(2, True, [1, 2, 2, 2, 2, 2]),
                                                                     (None, False, [1, 2, 3, 4, 5, 6])])
def test_windows_not_yet_ingested_are_capped_apart_from_windows_in_flight(
    engine: Engine, before_ingest: int | None, ingesting: bool, pending: list[int]
) -> None:
    account = ensure_account(engine, "me@example.com", [], kind="gmail")
    run = begin_run(engine, account, "full", "gmail:me@example.com", stale_seconds=60)
    seen: list[WindowBacklog] = []

    def dispatch(window_id: int) -> None:
        seen.append(window_backlog(engine, run))  # the window just saved counts

    stop = threading.Event()
    worker = threading.Thread(target=_ingest_when_two_wait, args=(engine, run, seen, stop))
    if ingesting:
        worker.start()
    try:
        options = DriveOptions(window_size=1, windows_in_flight=256, poll_seconds=0.01, before_ingest=before_ingest)
        Driver(engine, run, options, dispatch).feed(
            [RawMessage(f"gmail:{i}", None, gmail_id=f"{i:x}") for i in range(6)])
    finally:
        stop.set()
        if ingesting:
            worker.join(10)
    assert [b.before_ingest for b in seen] == pending
    assert seen[-1].open == 6  # windows ingested but not finished did not hold the driver back
