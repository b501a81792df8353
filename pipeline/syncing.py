"""Syncing a Gmail account: full, incremental, catch-up; the one entry point `sync_account`.

- Full: snapshot historyId from getProfile before the first list, then list newest first and
  save ids in windows (ids first: a crash relists, skips what is stored, and goes on).
- Incremental: history.list from the stored cursor; deletions and label changes applied here,
  added ids fetched by the windows.
- Catch-up: when the cursor expired (404), or when a mailbox file already backfilled the account,
  list with `after:` from the newest message we hold minus a margin, never skipping ahead.
The cursor moves forward only, to the snapshot, and only when every window ingested.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from pipeline.accounts import mark_needs_reauth, reauth_advice
from pipeline.changes import delete_messages, relabel_messages
from pipeline.driver import Dispatch, DriveOptions, Driver, Tick, patiently
from pipeline.errors import ConfigError
from pipeline.records import RawMessage
from pipeline.resilience.classify import AUTH
from pipeline.runs import RunProgress, abandon_run, begin_run, run_progress
from pipeline.settings import Settings
from pipeline.sources.gmail import CursorExpired, GmailClient, GmailError, MessageRef
from pipeline.storage.db import transaction
from pipeline.storage.models import Account, GmailAlias, Message, SyncRun

MODES = ("auto", "full", "incremental")


@dataclass(frozen=True, slots=True)
class SyncSummary:
    run_id: int
    account: str
    mode: str  # full | incremental | catchup
    status: str
    listed: int
    new_messages: int
    duplicates: int
    gone: int
    failed: int
    deleted: int
    relabeled: int
    failed_windows: int  # window stages that failed for good
    enrichment_owed: int  # embed/insight stages an AI outage left owed: the enrichment sweep resumes them
    history_id: int | None
    quota_units: int  # spent by the listing and by every window's fetch
    seconds: float
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SyncPlan:
    mode: str
    query: str | None  # the `after:` bound of a catch-up or hybrid full sync
    cursor: int | None


def plan_sync(cursor: int | None, newest: datetime | None, requested: str, margin_days: int) -> SyncPlan:
    """Which sync to run, as a pure function of what the account holds."""
    if requested not in MODES:
        raise ConfigError(f"unknown sync mode {requested!r}; one of {', '.join(MODES)}")
    if requested == "incremental" and cursor is None:
        raise ConfigError("no history cursor yet: run a full sync first")
    if cursor is not None and requested != "full":
        return SyncPlan("incremental", None, cursor)
    return SyncPlan("full", after_query(newest, margin_days), None)


def after_query(newest: datetime | None, margin_days: int) -> str | None:
    # Gmail's after: takes whole days (or epoch seconds); a margin absorbs time zones and clock skew.
    if newest is None:
        return None
    return f"after:{int((newest - timedelta(days=margin_days)).timestamp())}"


def sync_account(
    engine: Engine,
    settings: Settings,
    account_id: int,
    client: GmailClient,
    dispatch: Dispatch,
    *,
    mode: str = "auto",
    on_tick: Tick | None = None,
    alive: Callable[[], bool] | None = None,
    run_id: int | None = None,
) -> SyncSummary:
    """Sync the account in a new run, or in `run_id`: a queued run the caller has just adopted
    (`pipeline.runs.adopt_queued_run`), which this then owns, and abandons when it cannot sync."""
    started = time.monotonic()
    try:
        email, cursor, newest = _account_state(engine, account_id)
        plan = plan_sync(cursor, newest, mode, settings.gmail_catchup_margin_days)
    except BaseException as exc:
        if run_id is not None:
            abandon_run(engine, run_id, f"the sync could not start: {exc}"[:2000])
        raise
    if run_id is None:
        run_id = begin_run(engine, account_id, plan.mode, f"gmail:{email}", settings.run_stale_seconds)
    else:
        _set_run_mode(engine, run_id, plan.mode, source=f"gmail:{email}")
    options = DriveOptions(settings.window_size, settings.windows_in_flight,
                           stall_seconds=settings.stage_time_limit + 60, before_ingest=settings.gmail_windows_fetching)
    driver = Driver(engine, run_id, options, dispatch, on_tick=on_tick, alive=alive)
    deleted = relabeled = listed = 0
    try:
        snapshot = client.profile().history_id  # before any listing: nothing between is missed
        _set_run_history(engine, run_id, snapshot)
        if plan.mode == "incremental":
            try:
                delta = client.history(plan.cursor or 0)
            except CursorExpired:
                plan = SyncPlan("catchup", after_query(newest, settings.gmail_catchup_margin_days), None)
                _set_run_mode(engine, run_id, "catchup")
            else:
                gone = delta.deleted | delta.hidden()
                deleted = delete_messages(engine, account_id, gone, settings.contact_half_life_days)
                relabeled = relabel_messages(engine, account_id, delta.labels_added, delta.labels_removed)
                listed = driver.feed(_unknown(engine, account_id, [[*delta.added.values(), *delta.revealed()]]))
        if plan.mode in ("full", "catchup"):
            seen: set[str] = set()
            pages: Iterable[list[MessageRef]] = _remember(client.list_pages(plan.query), seen)
            everything: set[str] = set()
            if plan.mode == "catchup":
                # The expired cursor took its history along: what changed before the `after:` range
                # (an old message deleted, or brought back from the trash) shows only in a listing of
                # everything. Ids only, one call per 500, after the recent range the user wants first.
                rest = (_without(page, seen) for page in _remember(client.list_pages(), everything))
                pages = itertools.chain(pages, rest)
            listed = driver.feed(_unknown(engine, account_id, pages))
            if plan.mode == "catchup":
                deleted = _delete_vanished(engine, account_id, client, everything, settings)
        progress = driver.wait()
    except GmailError as exc:
        if exc.error_class == AUTH:
            mark_needs_reauth(engine, account_id, str(exc)[:300])
        abandon_run(engine, run_id, f"{exc.error_class}: {exc}")
        progress = run_progress(engine, run_id)
    except BaseException:
        abandon_run(engine, run_id, "the sync was interrupted")
        raise
    _advance_cursor(engine, account_id, run_id, progress)
    return _summary(engine, progress, email, plan.mode, listed, deleted, relabeled,
                    client.units_spent + progress.quota_units,
                    time.monotonic() - started)


def _account_state(engine: Engine, account_id: int) -> tuple[str, int | None, datetime | None]:
    with transaction(engine) as s:
        account = s.get_one(Account, account_id)
        if account.status == "needs_reauth":
            raise ConfigError(reauth_advice(account.email, account.status_reason))
        newest = s.execute(select(func.max(Message.sent_at)).where(Message.account_id == account_id)).scalar()
        return account.email, account.history_id, newest


def _unknown(engine: Engine, account_id: int, pages: Iterable[list[MessageRef]]) -> Iterator[RawMessage]:
    """Refs whose Gmail id we do not hold yet, as window items to fetch."""
    for page in pages:
        if not page:
            continue
        known = patiently(_known_gmail_ids, engine, account_id, [r.id for r in page])
        for ref in page:
            if ref.id not in known:
                yield RawMessage(f"gmail:{ref.id}", None, gmail_thread_id=ref.thread_id, gmail_id=ref.id)


def _known_gmail_ids(engine: Engine, account_id: int, gmail_ids: list[str]) -> set[str | None]:
    with transaction(engine) as s:
        return set(s.execute(
            select(Message.gmail_id).where(Message.account_id == account_id, Message.gmail_id.in_(gmail_ids))
            .union(select(GmailAlias.gmail_id).where(GmailAlias.account_id == account_id,
                                                     GmailAlias.gmail_id.in_(gmail_ids)))
        ).scalars())


def _remember(pages: Iterable[list[MessageRef]], seen: set[str]) -> Iterator[list[MessageRef]]:
    for page in pages:
        seen.update(r.id for r in page)
        yield page


def _without(page: list[MessageRef], seen: set[str]) -> list[MessageRef]:
    return [r for r in page if r.id not in seen]


def _delete_vanished(engine: Engine, account_id: int, client: GmailClient, listed: set[str],
                     settings: Settings) -> int:
    """After a catch-up: delete what we hold that the listing of every id lacks and Gmail confirms gone.

    A held id missing from the listing is deleted only once a minimal get answers 404, so a listing
    that shifted under concurrent changes can never cost a message.
    """
    with transaction(engine) as s:
        held = set(s.execute(
            select(Message.gmail_id).where(Message.account_id == account_id, Message.gmail_id.is_not(None))
            .union(select(GmailAlias.gmail_id).where(GmailAlias.account_id == account_id))
        ).scalars())
    unlisted = sorted(g for g in held if g and g not in listed)
    gone = client.gone(unlisted) if unlisted else set()
    return delete_messages(engine, account_id, gone, settings.contact_half_life_days)


def _set_run_history(engine: Engine, run_id: int, history_id: int) -> None:
    with transaction(engine) as s:
        s.execute(update(SyncRun).where(SyncRun.id == run_id).values(history_id=history_id))


def _set_run_mode(engine: Engine, run_id: int, mode: str, source: str | None = None) -> None:
    values = {"mode": mode} if source is None else {"mode": mode, "source": source}
    with transaction(engine) as s:
        s.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values))


def _advance_cursor(engine: Engine, account_id: int, run_id: int, progress: RunProgress) -> None:
    """Forward only, and only when every window ingested: a failed fetch must be listed again."""
    if progress.status != "done" or progress.stage_failed_windows.get("ingest", 0):
        return
    with transaction(engine) as s:
        snapshot = s.execute(select(SyncRun.history_id).where(SyncRun.id == run_id)).scalar()
        if snapshot is None:
            return
        s.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(history_id=func.greatest(func.coalesce(Account.history_id, 0), snapshot),
                    last_synced_at=func.now())
        )


def _summary(engine: Engine, p: RunProgress, email: str, mode: str, listed: int, deleted: int, relabeled: int,
             units: int, seconds: float) -> SyncSummary:
    with transaction(engine) as s:
        history_id = s.execute(select(Account.history_id).where(Account.id == p.account_id)).scalar()
    return SyncSummary(
        run_id=p.run_id, account=email, mode=mode, status=p.status, listed=listed,
        new_messages=p.new_messages, duplicates=p.duplicates, gone=p.gone_messages, failed=p.failed_messages,
        deleted=deleted, relabeled=relabeled,
        failed_windows=sum(p.stage_failed_windows.values()) - p.enrichment_owed, enrichment_owed=p.enrichment_owed,
        history_id=history_id, quota_units=units, seconds=round(seconds, 3), error=p.error,
    )


__all__ = ["MODES", "SyncPlan", "SyncSummary", "after_query", "plan_sync", "sync_account"]
