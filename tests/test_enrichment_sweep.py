"""Owed enrichment and the sweep that resumes it; the work units that size stage time limits. Real Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from pipeline.enrichment import Owed, owed_enrichment, reopen, resume_owed, sweep
from pipeline.records import RawMessage
from pipeline.runs import add_window, begin_run, claim_stage, end_reading, ensure_account, fail_stage, run_progress
from pipeline.settings import Settings
from pipeline.stages.ingest import ingest_window
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import run_stage
from pipeline.stages.workload import quota_seconds_per_message, stage_units, window_limits

RAW = [
    b"From: Ann <ann@example.org>\nTo: me@example.com\nSubject: lunch\nMessage-ID: <a1@example.org>\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\n\nShall we have lunch on Friday? " + b"x" * 400 + b"\n",
    b"From: me@example.com\nTo: Ann <ann@example.org>\nSubject: Re: lunch\nMessage-ID: <a2@example.org>\n"
    b"In-Reply-To: <a1@example.org>\nDate: Mon, 23 Nov 2026 11:00:00 +0000\n\nYes, noon works.\n",
]


def _normalized_window(engine: Engine) -> tuple[int, int]:
    account = ensure_account(engine, "me@example.com", ["me@example.com"])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    wid = add_window(engine, run, 0, [RawMessage(f"offset:{i}", raw) for i, raw in enumerate(RAW)])
    end_reading(engine, run, len(RAW), 1)
    settings = Settings()
    assert run_stage(engine, settings, wid, "ingest", ingest_window).outcome == "done"
    assert stage_units(engine, settings, wid, "normalize") == sum(len(r) for r in RAW)
    assert run_stage(engine, settings, wid, "normalize", normalize_window).outcome == "done"
    assert run_stage(engine, settings, wid, "contacts", lambda s, c: {}).outcome == "done"
    return run, wid


def _fail(engine: Engine, wid: int, stage: str, error_class: str) -> None:
    claim = claim_stage(engine, wid, stage)
    assert claim is not None
    fail_stage(engine, claim, stage, error_class, "AI endpoint unavailable")


def test_units_count_only_what_is_still_owed(engine: Engine) -> None:
    _, wid = _normalized_window(engine)
    settings = Settings()
    assert stage_units(engine, settings, wid, "normalize") == 0  # done: nothing owed
    tokens = stage_units(engine, settings, wid, "embed")
    with engine.connect() as conn:
        chars = conn.execute(text("SELECT sum(length(coalesce(stripped_text, full_text, ''))) FROM messages")).scalar()
    assert tokens == chars / 4 > 100
    limits = window_limits(engine, settings, wid, "embed")
    assert limits is not None
    assert limits.soft == settings.timeout_embed_base + settings.timeout_embed_per_unit * tokens
    assert limits.hard > limits.soft
    assert window_limits(engine, settings, wid, "contacts") is None  # the default limits apply
    # A mailbox file's window fetches nothing: ingest gets its base only.
    assert stage_units(engine, settings, wid, "ingest") == 0


def test_ingest_units_fall_back_to_what_the_quota_allows() -> None:
    legacy = Settings(gmail_regime="legacy", windows_in_flight=4)
    # 5 units per get at 15,000 a minute, shared by 4 windows in flight: 0.08 s per message.
    assert abs(quota_seconds_per_message(legacy) - 0.08) < 1e-9
    assert quota_seconds_per_message(Settings(gmail_regime="2026", windows_in_flight=4)) > 0.08


def test_only_retryable_enrichment_failures_are_owed(engine: Engine) -> None:
    run, wid = _normalized_window(engine)
    _fail(engine, wid, "embed", "transient")
    _fail(engine, wid, "insight", "permanent")
    assert run_progress(engine, run).status == "done"  # the outage did not hold the run open
    assert owed_enrichment(engine) == [Owed(wid, "embed", "transient")]


def test_the_sweep_waits_while_the_breaker_is_open_then_resumes(engine: Engine) -> None:
    _, wid = _normalized_window(engine)
    _fail(engine, wid, "embed", "transient")
    _fail(engine, wid, "insight", "quota")
    sent: list[tuple[str, int]] = []

    waiting = sweep(engine, lambda stage, w: sent.append((stage, w)), endpoint_open=lambda: 12.0)
    assert sent == [] and waiting.waiting == 2 and "open" in (waiting.reason or "")

    done = sweep(engine, lambda stage, w: sent.append((stage, w)), endpoint_open=lambda: 0.0)
    assert sorted(sent) == [("embed", wid), ("insight", wid)]
    assert done.waiting == 0 and len(done.reopened) == 2
    with engine.connect() as conn:
        row = conn.execute(text("SELECT embed, insight, finished FROM windows WHERE id = :w"), {"w": wid}).one()
        failures = conn.execute(text("SELECT count(*) FROM failures WHERE window_id = :w"), {"w": wid}).scalar()
    assert tuple(row) == ("pending", "pending", False)
    assert failures == 0  # they no longer stand
    # Nothing is owed twice: a second sweep (or a concurrent one) re-opens nothing.
    assert sweep(engine, lambda stage, w: sent.append((stage, w)), endpoint_open=lambda: 0.0).reopened == []
    assert not reopen(engine, Owed(wid, "embed", "transient"))


def test_the_sweep_resumes_at_most_a_batch(engine: Engine) -> None:
    _, wid = _normalized_window(engine)
    _fail(engine, wid, "embed", "timeout")
    _fail(engine, wid, "insight", "rate_limit")
    sent: list[tuple[str, int]] = []
    result = sweep(engine, lambda stage, w: sent.append((stage, w)), endpoint_open=lambda: 0.0, batch=1)
    assert sent == [("embed", wid)] and result.waiting == 1


def test_resuming_now_goes_round_after_round_until_a_round_gets_nothing_done(engine: Engine) -> None:
    _, wid = _normalized_window(engine)
    _fail(engine, wid, "embed", "transient")
    _fail(engine, wid, "insight", "transient")
    sent: list[str] = []

    def half_open(stage: str, window_id: int) -> None:
        # The breaker lets the first call (embed) through; insight is refused and owed again.
        sent.append(stage)
        if stage == "embed":
            assert run_stage(engine, Settings(), window_id, "embed", lambda s, c: {}).outcome == "done"
        else:
            _fail(engine, window_id, stage, "transient")

    waits: list[float] = []
    result = resume_owed(engine, half_open, endpoint_open=lambda: 0.5 if sent else 0.0, sleep=waits.append)
    # Round 1: embed done, insight refused; round 2: insight refused again, nothing done: it stops there.
    assert sent == ["embed", "insight", "insight"]
    assert (result.rounds, result.done, result.owed) == (2, 1, 1)
    assert "still failing" in (result.reason or "")
    assert waits == [0.5]  # round 2 waited for the breaker
    assert owed_enrichment(engine) == [Owed(wid, "insight", "transient")]

    closed = resume_owed(engine, lambda stage, w: None, endpoint_open=lambda: 120.0)
    assert closed.rounds == 0 and "open for 120 s" in (closed.reason or "") and closed.owed == 1


def test_ingest_limits_use_the_accounts_own_latest_fetched_windows(engine: Engine) -> None:
    from pipeline.stages.workload import RECENT_WINDOWS, _seconds_per_message
    from pipeline.storage.db import transaction

    settings = Settings()
    mine = ensure_account(engine, "me@example.com", [], kind="gmail")
    other = ensure_account(engine, "other@example.com", [], kind="gmail")
    windows: dict[int, list[int]] = {mine: [], other: []}
    with engine.begin() as conn:
        # Three runs each, in turn; 4 windows per run: 0.1 s per message, then 0.2, then 0.4 for mine.
        for k in range(3):
            for account, seconds in ((mine, 0.1 * 2**k), (other, 5.0)):
                run = conn.execute(text(
                    "INSERT INTO sync_runs (account_id, mode, source, status, started_at) VALUES "
                    "(:a, 'incremental', 'gmail', 'done', now() - make_interval(hours => 10 - :k)) RETURNING id"),
                    {"a": account, "k": k}).scalar_one()
                for seq in range(4):
                    windows[account].append(conn.execute(text(
                        "INSERT INTO windows (run_id, seq, size, fetch_seconds) VALUES (:r, :s, 10, :f) RETURNING id"),
                        {"r": run, "s": seq, "f": 10 * seconds}).scalar_one())
        # A window that fetched nothing (an mbox window, or one with no Gmail item) does not count.
        conn.execute(text("UPDATE windows SET fetch_seconds = 0 WHERE id = :w"), {"w": windows[mine][-1]})
    latest = (windows[mine][:-1])[-RECENT_WINDOWS:]  # 3 of the 0.4 s run, 4 of 0.2, 3 of 0.1
    expected = (3 * 4.0 + 4 * 2.0 + 3 * 1.0) / (10 * len(latest))
    with transaction(engine) as s:
        assert _seconds_per_message(s, settings, windows[mine][0]) == pytest.approx(expected)
        assert _seconds_per_message(s, settings, windows[other][0]) == pytest.approx(5.0)
