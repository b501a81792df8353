"""bench/hierarchy.py at a tiny load on the session's Celery worker, and its checks catching planted faults."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from bench.hierarchy import check_integrity, run_load, scan_logs
from pipeline import progress_cache

pytestmark = pytest.mark.integration


def test_a_tiny_load_completes_and_the_checks_catch_planted_inconsistencies(
        engine: Engine, worker, tmp_path: Path) -> None:
    from tasks.chains import dispatch_window

    result = run_load(engine, 2, 3, 4, tmp_path, dispatch=dispatch_window, prefix="t", log_paths=[worker.log],
                      timeout=120, log=lambda _m: None)
    assert (result.runs_done, result.windows, result.windows_complete, result.entries) == (2, 6, 6, 24)
    assert result.integrity and not any(result.integrity.values()), result.integrity
    assert result.lock_errors_in_logs == {} and result.lock_failure_rows == 0
    assert result.messages_per_second > 0

    # The finished runs' progress is cached (by the call that finished each); the figures checked are the cache's.
    with engine.begin() as conn:
        at = progress_cache.SLOTS.index("duplicates")
        cached = conn.execute(text(f"UPDATE run_progress_cache SET progress = jsonb_set(progress, '{{f,{at}}}', "
                                   "'7') WHERE run_id = :r"), {"r": result.run_ids[0]}).rowcount
    assert cached == 1
    assert check_integrity(engine, result.run_ids).failed() == {"run progress figures that differ from the rows": 1}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM run_progress_cache"))

    with engine.begin() as conn:  # a window counter that no longer matches its items
        conn.execute(text("UPDATE windows SET new_messages = new_messages + 1 WHERE id = "
                          "(SELECT min(id) FROM windows WHERE run_id = :r)"), {"r": result.run_ids[0]})
    found = check_integrity(engine, result.run_ids).failed()
    assert found["windows whose new/duplicate/failed counters differ from their items"] == 1
    assert found["run progress figures that differ from the rows"] >= 1

    with engine.begin() as conn:  # a message that lost its window item
        conn.execute(text("DELETE FROM window_items WHERE (window_id, position) = (SELECT window_id, position FROM "
                          "window_items i JOIN windows w ON w.id = i.window_id WHERE w.run_id = :r AND "
                          "i.outcome = 'new' ORDER BY window_id DESC LIMIT 1)"), {"r": result.run_ids[1]})
    found = check_integrity(engine, result.run_ids).failed()
    for check in ("windows whose size differs from their items", "runs whose entries differ from their items",
                  "messages not created by exactly one item", "messages no item refers to"):
        assert found[check] == 1, (check, found)

    with engine.begin() as conn:  # a per-account count of `mailpipe status` that no longer matches its rows
        conn.execute(text("INSERT INTO account_count_deltas (account_id, kind, xact, delta) "
                          "SELECT account_id, 'contacts', 1, 1 FROM sync_runs WHERE id = :r"), {"r": result.run_ids[0]})
    assert check_integrity(engine, result.run_ids).failed()["status counts that differ from count(*)"] == 1


def test_lock_errors_are_found_in_what_a_log_gained(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text("ERROR: deadlock detected\n")
    mark = log.stat().st_size
    with log.open("a") as fh:
        fh.write("psycopg.errors.SerializationFailure: could not serialize access\n"
                 "Task mailpipe.ingest[x] retry: Retry in 2s\n")
    found, retries = scan_logs({log: mark})
    assert found == {"could not serialize": 1, "serializationfailure": 1} and retries == 1
