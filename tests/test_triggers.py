"""Queued runs: a trigger's run exists before its sync starts, the sync adopts it, and nothing is left
waiting forever (a failed publish, a lost task, a dead running run, an account that cannot sync)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text, update

from pipeline.api_auth import issue_token
from pipeline.errors import AccountPausedError, AuthError, NotFoundError, NotSyncableError, RunConflictError
from pipeline.push import COALESCED, QUEUED, abandon_queued_sync, request_sync, start_requested_sync
from pipeline.runs import begin_run, ensure_account
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import Account, SyncRun
from pipeline.syncing import sync_account
from pipeline.triggers import trigger_sync

EMAIL = "me@example.com"


def _runs(engine: Engine, account_id: int) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            text("SELECT id, status, mode FROM sync_runs WHERE account_id = :a ORDER BY id"), {"a": account_id})]


def _trigger(engine: Engine, email: str = EMAIL, **kwargs: Any) -> Any:
    queued: list[int] = []
    options: dict[str, Any] = {"token": None, "paused_for": lambda a: 0.0,
                               "queued_stale_seconds": 3600, "running_stale_seconds": 120, **kwargs}
    result = trigger_sync(engine, email, queued.append, **options)
    return result, queued


def test_a_trigger_queues_a_run_the_sync_adopts(engine: Engine) -> None:
    account = ensure_account(engine, EMAIL, [], kind="gmail")
    first, queued = _trigger(engine, mode="full")
    assert (first.status, first.coalesced, queued) == ("queued", False, [account])
    again, queued_again = _trigger(engine)
    assert (again.run_id, again.coalesced, queued_again) == (first.run_id, True, [])
    assert start_requested_sync(engine, account) == (first.run_id, "full")  # the requested mode comes along
    assert _runs(engine, account) == [(first.run_id, "running", "full")]
    joined, _ = _trigger(engine)
    assert (joined.run_id, joined.status) == (first.run_id, "running")
    assert start_requested_sync(engine, account) is None  # nothing queued any more


def test_a_failed_publish_abandons_the_run_and_the_next_trigger_queues_anew(engine: Engine) -> None:
    account = ensure_account(engine, EMAIL, [], kind="gmail")

    def broken(_: int) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        trigger_sync(engine, EMAIL, broken, token=None, paused_for=lambda a: 0.0,
                     queued_stale_seconds=3600, running_stale_seconds=120)
    [(lost, status, _)] = _runs(engine, account)
    assert status == "abandoned"
    fresh, queued = _trigger(engine)
    assert fresh.run_id != lost and queued == [account]


def test_a_lost_queued_run_and_a_dead_running_run_are_not_joined(engine: Engine) -> None:
    account = ensure_account(engine, EMAIL, [], kind="gmail")
    stale, _ = _trigger(engine)
    with transaction(engine) as s:
        s.execute(update(SyncRun).where(SyncRun.id == stale.run_id)
                  .values(heartbeat_at=text("now() - interval '2 hours'")))
    fresh, queued = _trigger(engine)
    assert fresh.run_id != stale.run_id and queued == [account]
    assert [r[1] for r in _runs(engine, account)] == ["abandoned", "queued"]
    # The new run is adopted; its driver then goes silent: a trigger does not join a dead run.
    assert start_requested_sync(engine, account) == (fresh.run_id, "auto")
    with transaction(engine) as s:
        s.execute(update(SyncRun).where(SyncRun.id == fresh.run_id)
                  .values(heartbeat_at=text("now() - interval '10 minutes'"), driver="otherhost:1"))
    after, _ = _trigger(engine)
    assert after.run_id not in (stale.run_id, fresh.run_id) and after.status == "queued"
    # Its sync takes the dead run over when it starts.
    assert start_requested_sync(engine, account, stale_seconds=120) == (after.run_id, "auto")
    assert [r[1] for r in _runs(engine, account)] == ["abandoned", "abandoned", "running"]


def test_a_running_import_is_not_joined_and_its_sync_waits(engine: Engine) -> None:
    account = ensure_account(engine, EMAIL, [], kind="gmail")
    import_run = begin_run(engine, account, "import", "/takeout/all.mbox", stale_seconds=120)
    triggered, _ = _trigger(engine)
    assert triggered.run_id != import_run and triggered.status == "queued"
    with pytest.raises(RunConflictError):
        start_requested_sync(engine, account)  # one running run per account: the task retries later
    assert [r[1] for r in _runs(engine, account)] == ["running", "queued"]


def test_push_does_not_join_a_running_sync(engine: Engine) -> None:
    account = ensure_account(engine, EMAIL, [], kind="gmail")
    queued: list[int] = []
    first = request_sync(engine, account, queued.append)
    start_requested_sync(engine, account)
    second = request_sync(engine, account, queued.append)
    third = request_sync(engine, account, queued.append)
    assert (first.status, second.status, third.status) == (QUEUED, QUEUED, COALESCED)
    assert first.run_id != second.run_id == third.run_id and queued == [account, account]


def test_who_may_trigger_what(engine: Engine) -> None:
    alice = ensure_account(engine, EMAIL, [], kind="gmail")
    bob = ensure_account(engine, "bob@example.com", [], kind="gmail")
    ensure_account(engine, "files@example.com", [], kind="mbox")
    token = issue_token(engine, alice).token
    with pytest.raises(NotFoundError) as foreign:
        _trigger(engine, "bob@example.com", token=token)
    with pytest.raises(NotFoundError) as unknown:
        _trigger(engine, "nobody@example.com", token=token)
    assert str(foreign.value) == str(unknown.value)
    for bad in ("mpt_" + "x" * 43, "nonsense"):
        for email in (EMAIL, "nobody@example.com"):  # a bad token is 401 whether the account exists or not
            with pytest.raises(AuthError):
                _trigger(engine, email, token=bad)
    assert _trigger(engine, token=token)[0].status == "queued"
    with pytest.raises(NotSyncableError):
        _trigger(engine, "files@example.com")
    with transaction(engine) as s:
        s.execute(update(Account).where(Account.id == bob).values(status="needs_reauth", status_reason="revoked"))
    with pytest.raises(NotSyncableError, match="accounts add"):
        _trigger(engine, "bob@example.com")
    with pytest.raises(AccountPausedError) as paused:
        _trigger(engine, paused_for=lambda a: 12.5)
    assert paused.value.retry_after == 12.5
    assert [r[1] for r in _runs(engine, alice)] == ["queued"] and _runs(engine, bob) == []


def test_a_run_adopted_by_a_sync_that_cannot_start_says_why(engine: Engine) -> None:
    account = ensure_account(engine, EMAIL, [], kind="gmail")
    triggered, _ = _trigger(engine)
    with transaction(engine) as s:
        s.execute(update(Account).where(Account.id == account).values(status="needs_reauth"))
    adopted = start_requested_sync(engine, account)
    assert adopted == (triggered.run_id, "auto")
    with pytest.raises(Exception, match="connected again"):
        sync_account(engine, Settings(), account, client=None, dispatch=lambda w: None,  # type: ignore[arg-type]
                     run_id=triggered.run_id)
    with engine.connect() as conn:
        status, error = conn.execute(text("SELECT status, error FROM sync_runs WHERE id = :i"),
                                     {"i": triggered.run_id}).one()
    assert status == "abandoned" and "connected again" in error
    # A sync that fails before adopting (no grant at all) leaves the queued run saying why, too.
    with transaction(engine) as s:
        s.execute(update(Account).where(Account.id == account).values(status="active"))
    again, _ = _trigger(engine)
    abandon_queued_sync(engine, account, "the sync could not start: not connected")
    assert _runs(engine, account)[-1][:2] == (again.run_id, "abandoned")
