"""Periodic upkeep on the real Postgres: the stuck-run watchdog, retention, counter reconciliation."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.importing import import_mbox
from pipeline.maintenance import reconcile, retention, stuck_runs, watchdog
from pipeline.records import RawMessage
from pipeline.runs import (
    add_window,
    begin_run,
    claim_stage,
    end_reading,
    ensure_account,
    record_failure,
    run_progress,
    skip_stage,
    this_driver,
)
from pipeline.settings import Settings
from pipeline.stages.contacts import contacts_window
from pipeline.stages.ingest import ingest_window
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import run_stage
from pipeline.storage.db import transaction

pytestmark = pytest.mark.integration


def _sql(engine: Engine, sql: str, **params: object) -> Any:
    with engine.begin() as conn:
        return conn.execute(text(sql), params)


def _run(engine: Engine, email: str, *, windows: int = 1, driver: str | None = None, heartbeat_age: float = 0,
         reading_done: bool = False) -> tuple[int, list[int]]:
    """A running run of its own account with `windows` one-message windows, as a driver left it."""
    account = ensure_account(engine, email, [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    ids = [add_window(engine, run, i, [RawMessage(f"offset:{i}", b"Subject: x\n\nhi\n")]) for i in range(windows)]
    if reading_done:
        end_reading(engine, run, windows, windows)
    _sql(engine, "UPDATE sync_runs SET driver = :d, heartbeat_at = now() - make_interval(secs => :age) "
                 "WHERE id = :id", d=driver or "elsewhere:1", age=heartbeat_age, id=run)
    return run, ids


def _age_window(engine: Engine, window_id: int, seconds: float) -> None:
    _sql(engine, "UPDATE windows SET updated_at = now() - make_interval(secs => :s) WHERE id = :id",
         s=seconds, id=window_id)


def _finish_window(engine: Engine, window_id: int) -> None:
    _sql(engine, "UPDATE windows SET ingest = 'done', normalize = 'done', contacts = 'done', embed = 'done', "
                 "insight = 'done', finished = true WHERE id = :id", id=window_id)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no such process on this host now


def test_watchdog_takes_over_the_runs_whose_driver_is_gone(engine: Engine) -> None:
    settings = Settings(watchdog_stale_seconds=900, run_abandon_seconds=3000, stage_time_limit=660,
                        stage_soft_time_limit=600, sync_queued_stale_seconds=1800)
    # Reading, on another host, silent for longer than the watchdog allows: it can never finish.
    reading, _ = _run(engine, "a@example.com", heartbeat_age=1000)
    # Reading over, driver's process gone from this host (heartbeat fresh): one window lost, one moving.
    dead = f"{socket.gethostname()}:{_dead_pid()}"
    orphan, (lost, moving) = _run(engine, "b@example.com", windows=2, driver=dead, reading_done=True)
    _age_window(engine, lost, 1000)
    # Reading over, every window finished, driver gone before it closed the run.
    closable, (done,) = _run(engine, "c@example.com", heartbeat_age=1000, reading_done=True)
    _finish_window(engine, done)
    # A live driver (this process) with a stalled window: its own business, left alone.
    alive, (stalled,) = _run(engine, "d@example.com", driver=this_driver())
    _age_window(engine, stalled, 1000)
    # Driver gone for longer than run_abandon_seconds and windows still open: given up.
    hopeless, _ = _run(engine, "e@example.com", heartbeat_age=4000, reading_done=True)
    # Queued syncs: one that never started (lost), one just queued.
    for email, age in (("a@example.com", "2 hours"), ("b@example.com", "0 s")):
        _sql(engine, "INSERT INTO sync_runs (account_id, mode, source, status, heartbeat_at) SELECT id, 'auto', "
                     "'gmail:' || email, 'queued', now() - CAST(:age AS interval) FROM accounts WHERE email = :e",
             age=age, e=email)

    stuck = {r.run_id: r for r in stuck_runs(engine, settings)}
    assert set(stuck) == {reading, orphan, closable, alive, hopeless}
    assert not stuck[alive].driver_gone and stuck[alive].stalled_windows == 1
    assert stuck[orphan].driver_gone and (stuck[orphan].open_windows, stuck[orphan].stalled_windows) == (2, 1)

    sent: list[int] = []
    report = watchdog(engine, settings, sent.append)

    assert sent == [lost] and report.redispatched == {orphan: [lost]}
    assert dict(report.abandoned).keys() == {reading, hopeless}
    assert "stopped while reading" in dict(report.abandoned)[reading]
    assert "never finished" in dict(report.abandoned)[hopeless]
    assert report.finished == [closable]
    statuses = {run: run_progress(engine, run).status for run in (reading, orphan, closable, alive, hopeless)}
    assert statuses == {reading: "abandoned", orphan: "running", closable: "done", alive: "running",
                        hopeless: "abandoned"}
    assert run_progress(engine, reading).error == dict(report.abandoned)[reading]
    idle = _sql(engine, "SELECT extract(epoch FROM now() - updated_at) FROM windows WHERE id = :id", id=lost).scalar()
    assert idle < 60  # touched: the next pass waits a whole stall before sending it again
    queued = dict(_sql(engine, "SELECT a.email, r.status FROM sync_runs r JOIN accounts a ON a.id = r.account_id "
                               "WHERE r.mode = 'auto'").all())
    assert report.queued_abandoned == [_sql(engine, "SELECT id FROM accounts WHERE email = 'a@example.com'").scalar()]
    assert queued == {"a@example.com": "abandoned", "b@example.com": "queued"}

    # A second pass right after finds nothing more to do: the re-sent window is fresh again.
    again = watchdog(engine, settings, sent.append)
    assert (again.abandoned, again.finished, again.redispatched, again.queued_abandoned) == ([], [], {}, [])
    assert sent == [lost]


def _finished_run(engine: Engine, account: int, age_days: float, *, owed: bool = False) -> tuple[int, int]:
    """A finished run with one window of two items pointing at a stored message, and a failure record."""
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    window = add_window(engine, run, 0, [RawMessage(f"r{run}:0", b"x"), RawMessage(f"r{run}:1", b"y")])
    with transaction(engine) as s:
        message = s.execute(text(
            "INSERT INTO messages (account_id, message_key, source_ref, raw, size, content_hash) "
            "VALUES (:a, :k, 'x', 'x', 1, 'h') RETURNING id"), {"a": account, "k": f"key-{run}"}).scalar_one()
        s.execute(text("UPDATE window_items SET message_id = :m, outcome = 'new', raw = NULL WHERE window_id = :w"),
                  {"m": message, "w": window})
        record_failure(s, account, run, window, f"r{run}:1", "normalize", "permanent", "unparseable")
        if owed:  # the AI endpoint was out: the sweep re-opens this window's embed stage from its items
            record_failure(s, account, run, window, "window", "embed", "transient", "endpoint down")
    _sql(engine, "UPDATE windows SET ingest = 'done', normalize = 'done', contacts = 'done', "
                 f"embed = '{'failed' if owed else 'done'}', insight = 'done', finished = true WHERE id = :w", w=window)
    _sql(engine, "UPDATE sync_runs SET status = 'done', reading_done = true, "
                 "finished_at = now() - make_interval(secs => :age) WHERE id = :id", age=age_days * 86400, id=run)
    return run, window


def test_retention_deletes_old_bookkeeping_never_mail(engine: Engine) -> None:
    settings = Settings(retention_days=30, window_items_retention_days=7)
    account = ensure_account(engine, "me@example.com", [])
    old, _ = _finished_run(engine, account, 40)
    owed, owed_window = _finished_run(engine, account, 40, owed=True)
    recent, recent_window = _finished_run(engine, account, 10)
    fresh, fresh_window = _finished_run(engine, account, 1)
    latest, latest_window = _finished_run(engine, account, 45)  # the account's latest run, however old
    other = ensure_account(engine, "other@example.com", [])
    running = begin_run(engine, other, "import", "test", stale_seconds=60)
    running_window = add_window(engine, running, 0, [RawMessage("a", b"x")])
    now = time.time()
    _sql(engine, "INSERT INTO quota_buckets (key, tokens, updated_at, paused_until) VALUES "
                 "('idle', 1, :idle, 0), ('busy', 1, :now, 0), ('paused', 1, :idle, :later)",
         idle=now - 7200, now=now, later=now + 600)
    messages = _sql(engine, "SELECT count(*) FROM messages").scalar()
    # A change row (pipeline.progress_cache) a writer left for a run deleted under it; the deleted run's
    # own change rows go too (no foreign key to cascade: migration 0015).
    _sql(engine, "INSERT INTO run_changes (run_id, xact) VALUES (999999, 1)")
    kept = [owed, recent, fresh, latest, running]
    changes_gone = _sql(engine, "SELECT count(*) FROM run_changes WHERE run_id <> ALL(:k)", k=kept).scalar()

    report = retention(engine, settings)

    runs = set(_sql(engine, "SELECT id FROM sync_runs").scalars())
    assert runs == {owed, recent, fresh, latest, running}
    items = dict(_sql(engine, "SELECT window_id, count(*) FROM window_items GROUP BY window_id").all())
    # Items: kept where the sweep may still need them, the run is recent, or it is the latest; else gone.
    assert items == {owed_window: 2, fresh_window: 2, running_window: 1}
    assert recent_window not in items and latest_window not in items
    assert _sql(engine, "SELECT count(*) FROM windows WHERE id = :w", w=recent_window).scalar() == 1
    assert set(_sql(engine, "SELECT run_id FROM failures").scalars()) == {owed, recent, fresh, latest}
    assert report.as_dict() == {"runs_deleted": 1, "windows_deleted": 1, "window_items_deleted": 2 + 2 + 2,
                                "failures_deleted": 1, "quota_buckets_deleted": 1,
                                "run_changes_deleted": changes_gone, "count_deltas_folded": report.count_deltas_folded}
    assert changes_gone >= 2  # the orphan, and the deleted run's window insert
    assert set(_sql(engine, "SELECT DISTINCT run_id FROM run_changes").scalars()) == runs  # the kept runs' rows stay
    assert report.count_deltas_folded > 0  # status's count rows of the set-up's transactions, folded
    assert set(_sql(engine, "SELECT key FROM quota_buckets").scalars()) == {"busy", "paused"}
    assert _sql(engine, "SELECT count(*) FROM messages").scalar() == messages  # never mail
    assert retention(engine, settings).as_dict() == dict.fromkeys(report.as_dict(), 0)


def _inline(engine: Engine, settings: Settings) -> Any:
    """Dispatch that runs a window's stages right here (no broker): real stage code, real rows."""
    def dispatch(window_id: int) -> None:
        run_stage(engine, settings, window_id, "ingest", ingest_window)
        run_stage(engine, settings, window_id, "normalize", normalize_window)
        run_stage(engine, settings, window_id, "contacts", lambda s, c: contacts_window(s, c, settings))
        for stage in ("embed", "insight"):
            claim = claim_stage(engine, window_id, stage)
            assert claim is not None
            skip_stage(engine, claim, stage)
    return dispatch


COUNTERS = {
    "contacts": "SELECT id, sent_count, received_count, thread_count, first_seen, last_seen, "
                "round(rank_log::numeric, 9), round(rank_key::numeric, 9) FROM contacts ORDER BY id",
    "threads": "SELECT id, message_count, first_at, last_at FROM threads ORDER BY id",
    "windows": "SELECT id, new_messages, duplicates, failed FROM windows ORDER BY id",
    "runs": "SELECT id, entries, windows_total FROM sync_runs ORDER BY id",
}


def _counters(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in _sql(engine, sql).all()] for name, sql in COUNTERS.items()}


def test_reconciliation_repairs_drifted_counters_and_only_those(engine: Engine, sample_mbox: Path) -> None:
    settings = Settings(window_size=20, windows_in_flight=4)
    summary = import_mbox(engine, settings, sample_mbox, "me@example.com", _inline(engine, settings))
    assert summary.status == "done" and summary.contacts > 3
    truth = _counters(engine)
    assert reconcile(engine, settings).as_dict() == {"contacts": [], "threads": [], "windows": [], "runs": [],
                                                     "busy": 0, "counts": []}  # what the stages stored is consistent

    contacts = [r[0] for r in truth["contacts"]]
    threads = [r[0] for r in truth["threads"] if r[1] > 0]
    windows = [r[0] for r in truth["windows"]]
    _sql(engine, "UPDATE contacts SET sent_count = sent_count + 3 WHERE id = :id", id=contacts[0])
    _sql(engine, "UPDATE contacts SET received_count = 0, last_seen = now() WHERE id = :id", id=contacts[1])
    _sql(engine, "UPDATE contacts SET rank_log = rank_log + 1, rank_key = rank_key + 1 WHERE id = :id",
         id=contacts[2])
    _sql(engine, "UPDATE contacts SET thread_count = 42 WHERE id = :id", id=contacts[3])
    _sql(engine, "UPDATE threads SET message_count = message_count + 1, first_at = NULL WHERE id = :id",
         id=threads[0])
    _sql(engine, "UPDATE windows SET new_messages = 0, duplicates = 7 WHERE id = :id", id=windows[-1])
    _sql(engine, "UPDATE sync_runs SET entries = 1, windows_total = 99")

    report = reconcile(engine, settings)

    assert report.contacts == sorted(contacts[:4])
    assert (report.threads, report.windows, report.runs, report.busy) == ([threads[0]], [windows[-1]],
                                                                          [summary.run_id], 0)
    assert _counters(engine) == truth
    assert not reconcile(engine, settings).contacts
