"""Run and window state on a real Postgres: the lock, stage transitions, poison cap, completion."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from pipeline.errors import RunConflictError
from pipeline.records import RawMessage
from pipeline.runs import (
    add_window,
    begin_run,
    claim_stage,
    downstream_of,
    end_reading,
    ensure_account,
    fail_stage,
    run_progress,
)
from pipeline.settings import Settings
from pipeline.stages.runner import run_stage
from pipeline.storage.db import transaction


def test_downstream_of_follows_dependencies() -> None:
    assert set(downstream_of("ingest")) == {"normalize", "contacts", "embed", "insight"}
    assert set(downstream_of("normalize")) == {"contacts", "embed", "insight"}
    assert downstream_of("contacts") == []


def _window(engine: Engine) -> tuple[int, int]:
    account = ensure_account(engine, "me@example.com", [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    wid = add_window(engine, run, 0, [RawMessage("offset:0", b"Subject: x\n\nhi\n")])
    return run, wid


def test_one_running_run_per_account(engine: Engine) -> None:
    account = ensure_account(engine, "me@example.com", [])
    begin_run(engine, account, "import", "a", stale_seconds=60)
    with pytest.raises(RunConflictError):
        begin_run(engine, account, "import", "b", stale_seconds=60)


def test_run_of_a_dead_driver_is_taken_over(engine: Engine) -> None:
    account = ensure_account(engine, "me@example.com", [])
    first = begin_run(engine, account, "import", "a", stale_seconds=60)
    with engine.begin() as conn:
        conn.execute(text("UPDATE sync_runs SET driver = :d WHERE id = :id"),
                     {"d": "x:1", "id": first})  # another host: only the heartbeat can free it
    with pytest.raises(RunConflictError):
        begin_run(engine, account, "import", "b", stale_seconds=60)
    import socket
    with engine.begin() as conn:
        conn.execute(text("UPDATE sync_runs SET driver = :d WHERE id = :id"),
                     {"d": f"{socket.gethostname()}:999999999", "id": first})  # this host, no such pid
    second = begin_run(engine, account, "import", "b", stale_seconds=60)
    assert run_progress(engine, first).status == "abandoned"
    assert run_progress(engine, second).status == "running"


def test_completed_stage_is_not_claimed_again(engine: Engine) -> None:
    _, wid = _window(engine)
    calls = []
    settings = Settings()
    first = run_stage(engine, settings, wid, "ingest", lambda s, c: calls.append(1) or {})
    second = run_stage(engine, settings, wid, "ingest", lambda s, c: calls.append(1) or {})
    assert (first.outcome, second.outcome, len(calls)) == ("done", "already_done", 1)


def test_failure_blocks_only_downstream_and_finishes_the_run(engine: Engine) -> None:
    run, wid = _window(engine)
    settings = Settings()
    run_stage(engine, settings, wid, "ingest", lambda s, c: {})
    run_stage(engine, settings, wid, "normalize", lambda s, c: {})

    def boom(session, claim):  # type: ignore[no-untyped-def]
        raise ValueError("bad data")

    assert run_stage(engine, settings, wid, "contacts", boom).outcome == "failed"
    assert run_stage(engine, settings, wid, "embed", lambda s, c: {}).outcome == "done"
    assert run_stage(engine, settings, wid, "insight", lambda s, c: {}).outcome == "done"
    end_reading(engine, run, 1, 1)
    progress = run_progress(engine, run)
    assert progress.status == "done"
    assert progress.stage_failed_windows["contacts"] == 1
    with transaction(engine) as s:
        reason = s.execute(text("SELECT error_class, reason FROM failures WHERE stage = 'contacts'")).one()
    assert reason == ("permanent", "ValueError: bad data")


def test_upstream_failure_skips_dependents(engine: Engine) -> None:
    run, wid = _window(engine)
    claim = claim_stage(engine, wid, "ingest")
    assert claim is not None
    fail_stage(engine, claim, "ingest", "permanent", "unreadable")
    end_reading(engine, run, 1, 1)
    with transaction(engine) as s:
        row = s.execute(text("SELECT normalize, contacts, embed, insight, finished FROM windows")).one()
    assert row == ("skipped", "skipped", "skipped", "skipped", True)
    assert run_progress(engine, run).status == "done"


def test_redelivery_cap_quarantines_a_window(engine: Engine) -> None:
    _, wid = _window(engine)
    settings = Settings(max_deliveries=2)
    for _ in range(2):  # two deliveries that died without ending (a killed worker leaves the claim)
        claim_stage(engine, wid, "ingest")
    result = run_stage(engine, settings, wid, "ingest", lambda s, c: {})
    assert result.outcome == "quarantined"
    with transaction(engine) as s:
        assert s.execute(text("SELECT error_class FROM failures")).scalar_one() == "poison"


def test_an_interrupt_wrapped_by_a_library_is_raised_as_itself(engine: Engine) -> None:
    # The openai client turns anything raised inside a request (the task's soft time limit) into
    # APIConnectionError; the stage must see the interrupt, not a transient error to classify.
    class Interrupt(Exception):
        pass

    _, wid = _window(engine)
    settings = Settings()

    def work(_s: object, _c: object) -> dict[str, int]:
        try:
            raise Interrupt("soft time limit")
        except Interrupt as exc:
            raise ConnectionError("wrapped by a library") from exc

    with pytest.raises(Interrupt):
        run_stage(engine, settings, wid, "ingest", work, interrupts=(Interrupt,))
    # Without it declared, it is just an error of its class: a retry (transient) for the caller.
    from pipeline.stages.runner import StageRetry

    with pytest.raises(StageRetry):
        run_stage(engine, settings, wid, "ingest", work)


def test_detailed_progress_counts_windows_by_state_and_failures_from_the_same_scans(engine: Engine) -> None:
    """runs_progress_in(detail=True) reads windows by state and failures by class with grouping sets:
    its run-level figures must be those of the plain read, and its breakdowns the rows' own counts."""
    from pipeline.runs import record_failure, runs_progress_in

    account = ensure_account(engine, "me@example.com", [])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    windows = [add_window(engine, run, i, [RawMessage(f"offset:{i}:{j}", b"Subject: x\n\nhi\n") for j in range(2)])
               for i in range(3)]
    with transaction(engine) as s:
        s.execute(text("UPDATE windows SET ingest = 'done' WHERE id = ANY(:ids)"), {"ids": windows[:2]})
        s.execute(text("UPDATE windows SET ingest = 'failed', normalize = 'skipped' WHERE id = :id"),
                  {"id": windows[2]})
        record_failure(s, account, run, windows[0], "offset:0:0", "ingest", "parse", "x")
        record_failure(s, account, run, windows[0], "offset:0:0", "normalize", "parse", "x")  # the same item
        record_failure(s, account, run, windows[1], "offset:1:0", "ingest", "gone", "deleted")
        record_failure(s, account, run, windows[1], "window", "embed", "transient", "AI down")  # owed
        record_failure(s, account, run, windows[2], "window", "insight", "permanent", "bad")  # not owed
    with transaction(engine) as s:
        plain = runs_progress_in(s, [run])[run]
        detail = runs_progress_in(s, [run], detail=True)[run]
    assert plain.windows_by_state == {} and plain.failures_by_stage == {}
    assert (detail.failed_messages, detail.gone_messages, detail.enrichment_owed) == (1, 1, 1)
    assert (plain.failed_messages, plain.gone_messages, plain.enrichment_owed) == (1, 1, 1)
    assert plain.stage_done == detail.stage_done == {"ingest": 6, "normalize": 2, "contacts": 0, "embed": 0,
                                                    "insight": 0}
    assert plain.stage_failed_windows == detail.stage_failed_windows
    assert detail.windows_by_state["ingest"] == {"done": 2, "failed": 1}
    assert detail.windows_by_state["normalize"] == {"pending": 2, "skipped": 1}
    assert detail.windows_by_state["insight"] == {"pending": 3}
    assert detail.failures_by_stage == {"ingest": {"parse": 1, "gone": 1}, "normalize": {"parse": 1},
                                        "embed": {"transient": 1}, "insight": {"permanent": 1}}
