"""Finished runs' cached progress (pipeline.progress_cache, migration 0015) on a real Postgres: used while
current, never after a change to the run's windows or failures, including one that commits between the
snapshot the figures were computed in and their writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline import progress_cache
from pipeline.records import RawMessage
from pipeline.reports import _STATUS, status
from pipeline.runs import (
    FILL_BATCH,
    FILL_LOCK,
    STAGES,
    FiguresRead,
    RunProgress,
    add_window,
    begin_run,
    end_reading,
    ensure_account,
    figures_of,
    fill_progress_cache,
    fill_progress_cache_on_start,
    record_failure,
    run_progress,
    runs_progress_in,
)
from pipeline.storage.db import reading, transaction

SENTINEL = 999_999  # written into a cached row: seen in `status` only if the row was used


def _finished_run(engine: Engine, windows: int = 2) -> tuple[int, int, list[int]]:
    """An account with one done run of `windows` finished windows of two messages each."""
    account = ensure_account(engine, "me@example.com", [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    ids = [add_window(engine, run, i, [RawMessage(f"offset:{i}:{j}", b"Subject: x\n\nhi\n") for j in range(2)])
           for i in range(windows)]
    done = ", ".join(f"{st} = 'done'" for st in STAGES)
    with transaction(engine) as s:
        s.execute(text(f"UPDATE windows SET {done}, finished = true, new_messages = 2 WHERE id = ANY(:ids)"),
                  {"ids": ids})
    end_reading(engine, run, entries=2 * windows, windows_total=windows)
    assert run_progress(engine, run).status == "done"
    return account, run, ids


def _forget(engine: Engine) -> None:
    """Drop every cached row (the run's finish cached its figures): the next read aggregates."""
    with transaction(engine) as s:
        s.execute(text("DELETE FROM run_progress_cache"))


def _aggregated(engine: Engine, meanwhile: Callable[[], None] | None = None) -> tuple[FiguresRead, str]:
    """What `status` does before it stores: the latest runs' figures aggregated in one statement, whose
    snapshot is S, and S; `meanwhile` runs (and commits) after it, before anything is stored."""
    with reading(engine) as conn:
        read = figures_of(conn.execute(_STATUS, {"recent_runs": 3}).all())
    if meanwhile is not None:
        meanwhile()
    assert read.snapshot is not None, "nothing cacheable was aggregated"
    return read, read.snapshot


def _shown(engine: Engine, run: int) -> dict[str, Any]:
    [account] = status(engine)
    [shown] = [r for r in account["runs"] if r["run_id"] == run]
    return shown


def _aggregated_progress(engine: Engine, run: int) -> RunProgress:
    """The run's progress aggregated from the rows (detail reads never use the cache)."""
    with transaction(engine) as s:
        return runs_progress_in(s, [run], detail=True)[run]


def _truth(engine: Engine, run: int) -> dict[str, Any]:
    return _key_figures(_aggregated_progress(engine, run))


def _figures(engine: Engine, run: int) -> dict[str, Any]:
    """Every cached figure of the run, aggregated from the rows."""
    p = _aggregated_progress(engine, run)
    return {name: getattr(p, name) for name in progress_cache.FIGURES}


def _key_figures(p: RunProgress) -> dict[str, Any]:
    return {"new_messages": p.new_messages, "windows_finished": p.windows_finished, "failed": p.failed_messages,
            "gone": p.gone_messages, "stage_done": p.stage_done}


def _as_truth(shown: dict[str, Any]) -> dict[str, Any]:
    return {"new_messages": shown["new_messages"], "windows_finished": shown["windows_finished"],
            "failed": shown["failed"], "gone": shown["gone"],
            "stage_done": {st: v["messages_done"] for st, v in shown["stages"].items()}}


def _tamper(engine: Engine, run: int) -> None:
    at = progress_cache.SLOTS.index("new_messages")
    with transaction(engine) as s:
        changed = s.execute(text(
            f"UPDATE run_progress_cache SET progress = jsonb_set(progress, '{{f,{at}}}', to_jsonb(:n)) "
            "WHERE run_id = :run"), {"n": SENTINEL, "run": run}).rowcount  # type: ignore[attr-defined]
    assert changed == 1, "status did not cache the finished run"


def test_the_call_that_finishes_a_run_caches_its_figures(engine: Engine) -> None:
    _, run, _ = _finished_run(engine)  # end_reading -> maybe_finish_run: done, and cached
    with engine.connect() as conn:
        layout, cached = conn.execute(text("SELECT progress->>'layout', (progress->'f')::text FROM run_progress_cache "
                                           "WHERE run_id = :r"), {"r": run}).one()
    assert layout == progress_cache.LAYOUT
    assert progress_cache.figures_from(cached) == _figures(engine, run)
    assert _key_figures(run_progress(engine, run)) == _truth(engine, run)  # run_progress reads the cached row


def test_status_caches_a_finished_run_and_then_reads_its_figures_from_the_cache(engine: Engine) -> None:
    _, run, _ = _finished_run(engine)
    _forget(engine)  # as for a run finished before the cache existed, or changed since
    first = _shown(engine, run)
    assert _as_truth(first) == _truth(engine, run)
    _tamper(engine, run)
    assert _shown(engine, run)["new_messages"] == SENTINEL  # the cached row, not the windows, answered
    # run_progress (READ COMMITTED) reads the same current row.
    assert run_progress(engine, run).new_messages == SENTINEL


def test_a_running_run_or_an_unfinished_window_is_not_cached(engine: Engine) -> None:
    account = ensure_account(engine, "me@example.com", [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    add_window(engine, run, 0, [RawMessage("offset:0", b"Subject: x\n\nhi\n")])
    _shown(engine, run)
    with transaction(engine) as s:
        s.execute(text("UPDATE sync_runs SET status = 'abandoned' WHERE id = :id"), {"id": run})
    _shown(engine, run)  # ended, but its window never finished
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM run_progress_cache")).scalar_one() == 0


def _reopen_window(engine: Engine, run: int, account: int, windows: list[int]) -> None:
    # What the enrichment sweep does to a finished window whose embedding is owed.
    with transaction(engine) as s:
        s.execute(text("UPDATE windows SET embed = 'pending', finished = false WHERE id = :id"), {"id": windows[0]})


def _recount_window(engine: Engine, run: int, account: int, windows: list[int]) -> None:
    # What reconciliation does to a finished window's counters.
    with transaction(engine) as s:
        s.execute(text("UPDATE windows SET new_messages = 1 WHERE id = :id"), {"id": windows[0]})


def _add_failure(engine: Engine, run: int, account: int, windows: list[int]) -> None:
    with transaction(engine) as s:
        record_failure(s, account, run, windows[0], "offset:0:0", "insight", "permanent", "late")


def _remove_failure(engine: Engine, run: int, account: int, windows: list[int]) -> None:
    with transaction(engine) as s:
        s.execute(text("DELETE FROM failures WHERE run_id = :run"), {"run": run})


def _add_window(engine: Engine, run: int, account: int, windows: list[int]) -> None:
    # A driver that outlived its run (taken over on another host) still adds a window.
    add_window(engine, run, len(windows), [RawMessage("offset:late", b"Subject: x\n\nhi\n")])


def _delete_window(engine: Engine, run: int, account: int, windows: list[int]) -> None:
    with transaction(engine) as s:
        s.execute(text("DELETE FROM windows WHERE id = :id"), {"id": windows[-1]})


CHANGES: dict[str, Callable[[Engine, int, int, list[int]], None]] = {
    "finished window reopened": _reopen_window,
    "finished window's counters changed": _recount_window,
    "failure recorded": _add_failure,
    "failure removed": _remove_failure,
    "window added": _add_window,
    "window deleted": _delete_window,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_to_a_cached_runs_windows_or_failures_makes_status_aggregate_again(
    engine: Engine, change: str
) -> None:
    account, run, windows = _finished_run(engine)
    if change == "failure removed":
        _add_failure(engine, run, account, windows)
    _shown(engine, run)
    _tamper(engine, run)
    CHANGES[change](engine, run, account, windows)
    shown = _shown(engine, run)
    assert shown["new_messages"] != SENTINEL, f"the cached row was used after: {change}"
    assert _as_truth(shown) == _truth(engine, run)


def test_a_change_committed_after_the_snapshot_but_before_the_figures_are_stored_is_not_hidden(
    engine: Engine,
) -> None:
    """The race a cache invalidated by writers would lose: the figures are computed in snapshot S, a
    writer commits a change S did not see, and only then are the figures stored. They must not be used."""
    account, run, windows = _finished_run(engine)
    _forget(engine)
    read, snap = _aggregated(engine, meanwhile=lambda: _recount_window(engine, run, account, windows))
    assert run in read.cacheable
    assert progress_cache.store(engine, snap, read.cacheable) == 1
    assert _as_truth(_shown(engine, run)) == _truth(engine, run)
    assert _truth(engine, run)["new_messages"] == 3  # 1 + 2: the change is what status shows


def test_a_writer_in_progress_when_the_snapshot_is_taken_is_not_hidden(engine: Engine) -> None:
    """The writer changed the window before S but commits after: S did not see it (its transaction was
    in progress), so figures stored at S are not used once it commits."""
    account, run, windows = _finished_run(engine)
    _forget(engine)  # so that the status below computes and stores its figures at S
    with engine.connect() as writer:
        writer.execute(text("BEGIN"))
        writer.execute(text("UPDATE windows SET new_messages = 5 WHERE id = :id"), {"id": windows[0]})
        # A later transaction commits first, so S counts the writer among those in progress (its xip),
        # not among those not started yet (at or past its xmax): both must hide the cached row.
        with transaction(engine) as s:
            s.execute(text("UPDATE accounts SET status = status"))
        before = _shown(engine, run)  # computes and stores at a snapshot with the writer in progress
        writer.execute(text("COMMIT"))
    assert before["new_messages"] == 4
    assert _shown(engine, run)["new_messages"] == 7


def test_a_cached_rows_list_reads_back_as_the_figures_it_was_written_from() -> None:
    figures = {name: {st: 10 * i + j for j, st in enumerate(STAGES)} if name in progress_cache.PER_STAGE else i
               for i, name in enumerate(progress_cache.FIGURES)}
    doc = progress_cache.document(figures)
    assert doc["layout"] == progress_cache.LAYOUT and len(doc["f"]) == len(progress_cache.SLOTS)
    read = progress_cache.figures_from(json.dumps(doc["f"]))
    assert read == figures
    assert read is not None and list(read["stage_done"]) == list(STAGES)  # shown in pipeline order
    assert progress_cache.figures_from(None) is None
    assert progress_cache.figures_from(json.dumps(doc["f"][:-1])) is None  # a slot missing
    assert progress_cache.figures_from(json.dumps(figures)) is None  # not a list
    assert progress_cache.figures_from("[1, 2") is None


@pytest.mark.parametrize("layout", ["another version", "other stages", "none"])
def test_a_row_of_another_layout_is_not_read_and_is_recomputed(engine: Engine, layout: str) -> None:
    _, run, _ = _finished_run(engine)
    _shown(engine, run)
    _tamper(engine, run)  # the row, were it read, would show SENTINEL
    version, _, slots = progress_cache.LAYOUT.partition(":")
    written = {"another version": f"{int(version) + 1}:{slots}",
               "other stages": progress_cache.LAYOUT.replace(".insight", ".review"), "none": None}[layout]
    with transaction(engine) as s:
        s.execute(text("UPDATE run_progress_cache SET progress = CASE WHEN CAST(:l AS text) IS NULL "
                       "THEN progress - 'layout' ELSE jsonb_set(progress, '{layout}', to_jsonb(CAST(:l AS text))) END"),
                  {"l": written})
    shown = _shown(engine, run)
    assert shown["new_messages"] != SENTINEL
    assert _as_truth(shown) == _truth(engine, run)
    with engine.connect() as conn:  # recomputed, and written in this code's layout
        assert conn.execute(text("SELECT progress->>'layout' FROM run_progress_cache")).scalar_one() == (
            progress_cache.LAYOUT)


def test_a_run_is_shown_the_same_from_its_cached_figures_as_aggregated(engine: Engine) -> None:
    """status builds a cached run's entry from its row and the cached list, an aggregated one from its
    RunProgress: every key must agree, timestamps with and without a fraction of a second included."""
    account, run, windows = _finished_run(engine, windows=3)
    with transaction(engine) as s:
        s.execute(text("UPDATE windows SET duplicates = 1, chunks_embedded = 4, quota_units = 7, "
                       "embed = 'failed' WHERE id = :id"), {"id": windows[1]})
        record_failure(s, account, run, windows[1], "window", "embed", "transient", "owed")
        record_failure(s, account, run, windows[1], "offset:1:0", "normalize", "gone", "deleted")
        s.execute(text("UPDATE sync_runs SET error = 'partly', started_at = date_trunc('second', started_at) "
                       "WHERE id = :id"), {"id": run})
    _forget(engine)
    aggregated = _shown(engine, run)
    cached = _shown(engine, run)
    _tamper(engine, run)
    assert _shown(engine, run)["new_messages"] == SENTINEL  # the second call did read the cache
    assert cached == aggregated
    assert "." not in aggregated["started_at"] and "." in aggregated["finished_at"]
    assert aggregated["error"] == "partly" and aggregated["stages"]["embed"]["failed_windows"] == 1
    assert (aggregated["duplicates"], aggregated["chunks_embedded"], aggregated["quota_units"]) == (1, 4, 7)
    assert (aggregated["gone"], aggregated["enrichment_owed"]) == (1, 1)
    assert list(cached["stages"]) == list(STAGES)


def test_status_reads_a_runs_row_in_run_fields_order() -> None:
    """reports._entry unpacks a run's row by position."""
    from pipeline.runs import RUN_FIELDS

    assert RUN_FIELDS == ("run_id", "account_id", "status", "mode", "source", "reading_done", "entries",
                          "windows_total", "started_at", "finished_at", "error")


def test_deleting_a_cached_run_or_its_account_takes_its_cache_and_retention_its_change_rows(
    engine: Engine,
) -> None:
    from pipeline.maintenance import retention
    from pipeline.settings import Settings

    account, run, windows = _finished_run(engine)
    _add_failure(engine, run, account, windows)
    _shown(engine, run)
    with engine.connect() as conn:
        logged = conn.execute(text("SELECT count(*) FROM run_changes")).scalar_one()
    with transaction(engine) as s:
        s.execute(text("DELETE FROM sync_runs WHERE id = :id"), {"id": run})  # its cascade logs nothing
    account, run, windows = _finished_run(engine)
    _add_failure(engine, run, account, windows)
    _shown(engine, run)
    with transaction(engine) as s:
        s.execute(text("DELETE FROM accounts WHERE id = :id"), {"id": account})
    with engine.connect() as conn:
        left = conn.execute(text(
            "SELECT (SELECT count(*) FROM run_progress_cache), (SELECT count(*) FROM run_changes)")).one()
    assert tuple(left) == (0, 2 * logged)  # the cached rows went with their runs; the change rows wait
    assert retention(engine, Settings()).run_changes_deleted == 2 * logged


def test_a_run_deleted_before_its_figures_are_stored_is_skipped(engine: Engine) -> None:
    _, run, _ = _finished_run(engine)
    _forget(engine)
    read, snap = _aggregated(engine)
    with transaction(engine) as s:
        s.execute(text("DELETE FROM sync_runs WHERE id = :id"), {"id": run})
    assert progress_cache.store(engine, snap, read.cacheable) == 0


def test_a_running_runs_stage_marks_write_no_change_rows(engine: Engine) -> None:
    """The hot path: stage marks on unfinished windows skip the trigger (its WHEN clause)."""
    account = ensure_account(engine, "me@example.com", [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    wid = add_window(engine, run, 0, [RawMessage("offset:0", b"Subject: x\n\nhi\n")])
    with engine.connect() as conn:
        after_insert = conn.execute(text("SELECT count(*) FROM run_changes")).scalar_one()
    for st in STAGES:
        with transaction(engine) as s:
            s.execute(text(f"UPDATE windows SET {st} = 'done' WHERE id = :id"), {"id": wid})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM run_changes")).scalar_one() == after_insert == 1


def test_the_cached_figures_are_every_progress_field_the_windows_and_failures_give() -> None:
    """A field added to RunProgress from the rows but not to FIGURES would be lost from cached runs."""
    from dataclasses import fields

    from pipeline.runs import RUN_COLUMNS, RunProgress

    own = {"run_id" if c.key == "id" else c.key for c in RUN_COLUMNS}
    detail = {"windows_by_state", "failures_by_stage"}
    assert set(progress_cache.FIGURES) == {f.name for f in fields(RunProgress)} - own - detail


def _statements_during(engine: Engine, call: Callable[[], Any]) -> list[str]:
    from sqlalchemy import event

    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_status_reads_cached_and_running_runs_in_one_statement(engine: Engine) -> None:
    """A running run's figures are aggregated in the statement that reads the accounts and their latest
    runs, beside the cached ones: `status` is one statement whatever the runs' states."""
    account, done_run, _ = _finished_run(engine)
    running = begin_run(engine, account, "import", "test", stale_seconds=60)
    wid = add_window(engine, running, 0, [RawMessage(f"offset:9:{j}", b"Subject: x\n\nhi\n") for j in range(3)])
    with transaction(engine) as s:
        s.execute(text("UPDATE windows SET ingest = 'done', new_messages = 3 WHERE id = :id"), {"id": wid})
        record_failure(s, account, running, wid, "offset:9:1", "normalize", "permanent", "bad")
    _shown(engine, done_run)  # the finished run's figures cached
    _tamper(engine, done_run)
    statements = _statements_during(engine, lambda: status(engine))
    assert len(statements) == 1, statements
    assert _shown(engine, done_run)["new_messages"] == SENTINEL  # read from the cache
    shown = _shown(engine, running)
    assert _as_truth(shown) == _truth(engine, running)
    assert (shown["new_messages"], shown["failed"], shown["stages"]["ingest"]["messages_done"]) == (3, 1, 3)
    with engine.connect() as conn:  # still running: not cached
        assert conn.execute(text("SELECT count(*) FROM run_progress_cache WHERE run_id = :r"),
                            {"r": running}).scalar_one() == 0


def test_a_cached_list_not_of_its_layouts_slots_is_not_read_and_is_recomputed(engine: Engine) -> None:
    _, run, _ = _finished_run(engine)
    _shown(engine, run)
    with transaction(engine) as s:  # this layout, but not a list of its slots
        s.execute(text("UPDATE run_progress_cache SET progress = jsonb_set(progress, '{f}', '[1, 2]')"))
    assert _as_truth(_shown(engine, run)) == _truth(engine, run)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT (progress->'f')::text FROM run_progress_cache")).scalar_one()
    assert progress_cache.figures_from(kept) == _figures(engine, run)


def test_status_lists_every_account_in_order_with_its_own_runs_latest_first(engine: Engine) -> None:
    """One statement, a row per run: an account without a run still has its row, and each account gets
    its own runs only, latest first, at most `recent_runs` of them."""
    first = ensure_account(engine, "a@example.com", [])
    ensure_account(engine, "b@example.com", [])  # never synced
    third = ensure_account(engine, "c@example.com", [])
    runs = {}
    for account in (first, third, first, first, first):
        run = begin_run(engine, account, "import", "test", stale_seconds=60)
        end_reading(engine, run, entries=0, windows_total=0)  # no window: done at once
        runs.setdefault(account, []).append(run)
    shown = status(engine, recent_runs=3)
    assert [a["email"] for a in shown] == ["a@example.com", "b@example.com", "c@example.com"]
    assert [r["run_id"] for r in shown[0]["runs"]] == runs[first][::-1][:3]
    assert shown[1]["runs"] == [] and shown[1]["messages"] == 0
    assert [r["run_id"] for r in shown[2]["runs"]] == runs[third]
    assert all(r["status"] == "done" and r["windows_finished"] == 0 for a in shown for r in a["runs"])


def _cached_runs(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT run_id, progress->>'layout' FROM run_progress_cache")).all())


def _status_would_cache(engine: Engine) -> list[int]:
    """The runs `status` would aggregate and then store, read as it reads them (nothing stored here)."""
    with reading(engine) as conn:
        return sorted(figures_of(conn.execute(_STATUS, {"recent_runs": 100}).all()).cacheable)


def _uncached_mix(engine: Engine) -> tuple[list[int], list[int]]:
    """Runs as an upgrade leaves them: finished ones with no cached row or one of another layout, a running
    one and an ended one whose window never finished. Returns (those to cache, those not to)."""
    account, first, _ = _finished_run(engine)
    _, second, _ = _finished_run(engine, windows=3)
    _, third, _ = _finished_run(engine, windows=1)
    _forget(engine)
    _shown(engine, third)  # cached by status, then made a row of the previous version
    with transaction(engine) as s:
        s.execute(text("UPDATE run_progress_cache SET progress = jsonb_set(progress, '{layout}', '\"1:old\"')"))
    running = begin_run(engine, account, "import", "test", stale_seconds=60)
    add_window(engine, running, 0, [RawMessage("offset:7:0", b"Subject: x\n\nhi\n")])
    ended = ensure_account(engine, "other@example.com", [])
    abandoned = begin_run(engine, ended, "import", "test", stale_seconds=60)
    add_window(engine, abandoned, 0, [RawMessage("offset:8:0", b"Subject: x\n\nhi\n")])
    with transaction(engine) as s:
        s.execute(text("UPDATE sync_runs SET status = 'abandoned' WHERE id = :id"), {"id": abandoned})
    return [first, second, third], [running, abandoned]


@pytest.mark.parametrize("batch", [FILL_BATCH, 1])
def test_the_fill_caches_every_finished_run_so_that_status_aggregates_none(engine: Engine, batch: int) -> None:
    to_cache, not_to = _uncached_mix(engine)
    assert _status_would_cache(engine) == to_cache  # what the first status after the upgrade would aggregate
    assert fill_progress_cache(engine, batch=batch) == len(to_cache)
    cached = _cached_runs(engine)
    assert sorted(cached) == to_cache and set(cached.values()) == {progress_cache.LAYOUT}
    shown = {r["run_id"]: r for a in status(engine, recent_runs=100) for r in a["runs"]}
    for run in to_cache:
        assert _as_truth(shown[run]) == _truth(engine, run)
    assert _status_would_cache(engine) == []
    statements = _statements_during(engine, lambda: status(engine, recent_runs=100))
    assert len(statements) == 1, statements  # read, nothing to store
    assert not set(not_to) & set(_cached_runs(engine))
    assert fill_progress_cache(engine, batch=batch) == 0  # nothing left: a later start does nothing


def test_a_fill_while_another_process_fills_leaves_it_to_that_one(engine: Engine) -> None:
    to_cache, _ = _uncached_mix(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": FILL_LOCK})
        try:
            assert fill_progress_cache(engine) is None
            assert _status_would_cache(engine) == to_cache  # nothing written
        finally:
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FILL_LOCK})
    assert fill_progress_cache(engine) == len(to_cache)


def test_a_fill_on_start_that_cannot_reach_the_database_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.storage.db import engine_for

    unreachable = engine_for("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    with caplog.at_level("WARNING", logger="pipeline.runs"):
        fill_progress_cache_on_start(unreachable)
    assert "progress not cached on start" in caplog.text


@pytest.mark.integration
def test_a_worker_caches_the_finished_runs_progress_when_it_starts(
        engine: Engine, mailpipe_env: dict[str, str], redis_broker: str, tmp_path: Path) -> None:
    from tests.conftest import CeleryProcess

    to_cache, not_to = _uncached_mix(engine)
    # A queue of its own: this worker takes none of the session worker's tasks.
    proc = CeleryProcess(["worker", "-Q", f"fill-{time.time_ns()}", "-c", "1", "--pool", "prefork", "-l", "INFO",
                          "-n", f"fill-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                         {**mailpipe_env, "MAILPIPE_EMBEDDER": "none"}, tmp_path / "worker.log", ready="ready.")
    proc.start()
    try:
        assert sorted(_cached_runs(engine)) == to_cache  # before it was ready
        assert f"cached the progress of {len(to_cache)} finished runs" in (tmp_path / "worker.log").read_text()
    finally:
        proc.stop()
    assert not set(not_to) & set(_cached_runs(engine))


def _mailpipe(url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILPIPE_DATABASE_URL": url, "MAILPIPE_HOME": str(home), "MAILPIPE_EMBEDDER": "none"}
    env.pop("MAILPIPE_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.integration
def test_mailpipe_migrate_caches_the_finished_runs_progress_and_says_how_many(
        engine: Engine, pg_url: str, tmp_path: Path) -> None:
    to_cache, _ = _uncached_mix(engine)
    said = json.loads(_mailpipe(pg_url, tmp_path, "migrate", "--json").stdout)
    assert (said["upgraded"], said["runs_cached"], said["another_process_caching"]) == (False, len(to_cache), False)
    assert sorted(_cached_runs(engine)) == to_cache
    assert "progress cached: 0 runs" in _mailpipe(pg_url, tmp_path, "migrate").stdout


@pytest.mark.integration
@pytest.mark.parametrize("command", ["migrate", "accounts list"])
def test_runs_that_finished_before_the_cache_existed_are_cached_by_the_upgrade_that_adds_it(
        empty_database: str, tmp_path: Path, command: str) -> None:
    """The schema one migration before the cache (0015), with finished runs; whichever command upgrades
    it caches their figures, and the first `status` then aggregates none of them."""
    from alembic.command import downgrade

    from pipeline.storage.db import alembic_config, engine_for, migrate

    migrate(empty_database)
    engine = engine_for(empty_database)
    try:
        runs = sorted(_finished_run(engine, windows=w)[1] for w in (1, 2, 3))
        downgrade(alembic_config(empty_database), "0014")  # the cache's table and triggers dropped
        said = json.loads(_mailpipe(empty_database, tmp_path, *command.split(), "--json").stdout)
        if command == "migrate":
            assert (said["upgraded"], said["runs_cached"]) == (True, len(runs))
        assert sorted(_cached_runs(engine)) == runs
        shown: list[dict[str, Any]] = []
        statements = _statements_during(engine, lambda: shown.extend(status(engine)))
        assert len(statements) == 1, statements  # read from the cache, nothing left to store
        by_id = {r["run_id"]: r for a in shown for r in a["runs"]}
        for run in runs:
            assert _as_truth(by_id[run]) == _truth(engine, run)
    finally:
        engine.dispose()


@pytest.mark.parametrize("upgraded", [True, False])
def test_a_command_that_upgraded_the_schema_caches_the_finished_runs_progress(
        engine: Engine, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upgraded: bool) -> None:
    """Standing workers did not restart to fill it: the command that ran the upgrade does."""
    import tasks.runtime as runtime_module
    from pipeline.settings import Settings, get_settings
    from tasks import context

    to_cache, _ = _uncached_mix(engine)
    with monkeypatch.context() as patched:
        # runtime() exports the URLs it chose: set here, so that the environment is restored after it.
        patched.setenv("MAILPIPE_DATABASE_URL", pg_url)
        patched.setenv("MAILPIPE_BROKER_URL", "sqla+" + pg_url)
        patched.setattr(runtime_module, "migrate", lambda url: upgraded)  # whether this command upgraded
        with runtime_module.runtime(Settings(database_url=pg_url, home=tmp_path, embedder="none")):
            pass
    get_settings.cache_clear()  # read from the restored environment again
    context.resolved_database_url.cache_clear()
    current = sorted(run for run, layout in _cached_runs(engine).items() if layout == progress_cache.LAYOUT)
    assert current == (to_cache if upgraded else [])
