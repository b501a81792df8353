"""Gmail push: a Pub/Sub notification names an account and a historyId; sync it, coalesced.

Notifications come late, twice, or in bursts (one per change). A burst before the sync starts
becomes one queued sync (one queued run, `request_sync`); a notification the running or last sync
already covers enqueues nothing.
A notification for an address we do not hold is acknowledged and dropped (Pub/Sub would redeliver
a refusal forever).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select, update

from pipeline.errors import BadInputError
from pipeline.runs import QUEUED as RUN_QUEUED
from pipeline.runs import abandon_run, adopt_queued_run, queue_run
from pipeline.storage.db import transaction
from pipeline.storage.models import Account, SyncRun

log = logging.getLogger(__name__)

UNKNOWN, COVERED, QUEUED, COALESCED = "unknown_account", "covered", "queued", "coalesced"


@dataclass(frozen=True, slots=True)
class PushNotice:
    email: str
    history_id: int


@dataclass(frozen=True, slots=True)
class PushOutcome:
    status: str  # unknown_account | covered | queued | coalesced
    account_id: int | None
    run_id: int | None = None  # the queued (or, coalesced into it, running) run that will cover the notice


# Defaults of Settings.sync_queued_stale_seconds and Settings.run_stale_seconds.
QUEUED_STALE_SECONDS, RUNNING_STALE_SECONDS = 3600.0, 120.0


def parse_push(body: Mapping[str, Any]) -> PushNotice:
    """The notice inside a Pub/Sub push body: message.data is base64 JSON {emailAddress, historyId}."""
    try:
        data = body["message"]["data"]
        decoded = json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))
        return PushNotice(str(decoded["emailAddress"]).strip().lower(), int(decoded["historyId"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"not a Gmail push notification: {exc!r}") from exc


def handle_push(engine: Engine, notice: PushNotice, enqueue: Callable[[int], None], *,
                queued_stale_seconds: float = QUEUED_STALE_SECONDS,
                running_stale_seconds: float = RUNNING_STALE_SECONDS) -> PushOutcome:
    with transaction(engine) as s:
        account = s.execute(select(Account).where(Account.email == notice.email)).scalar()
        if account is None or account.kind != "gmail":
            log.warning("push notification for unknown account %s acknowledged and dropped", notice.email)
            return PushOutcome(UNKNOWN, None)
        account_id = account.id
        running = s.execute(
            select(func.max(SyncRun.history_id)).where(SyncRun.account_id == account_id, SyncRun.status == "running")
        ).scalar()
        covered = max(account.history_id or 0, running or 0)
        if notice.history_id <= covered:
            return PushOutcome(COVERED, account_id)
    return request_sync(engine, account_id, enqueue, queued_stale_seconds=queued_stale_seconds,
                        running_stale_seconds=running_stale_seconds)


def request_sync(engine: Engine, account_id: int, enqueue: Callable[[int], None], *, join_running: bool = False,
                 mode: str = "auto", queued_stale_seconds: float = QUEUED_STALE_SECONDS,
                 running_stale_seconds: float = RUNNING_STALE_SECONDS) -> PushOutcome:
    """Queue one sync for the account unless one is already queued and not yet started.

    The queued sync is a `sync_runs` row (status queued) made in one short transaction
    (`pipeline.runs.queue_run`), so the trigger knows its run id at once; the task, published after the
    commit, adopts it as it starts. With `join_running` (a web trigger) a running sync counts as well:
    the trigger is answered with that run. Push notifications do not join a running sync, whose
    snapshot may predate the change (`handle_push` already dropped the notices it covers).
    """
    with transaction(engine) as s:
        run_id, created, _ = queue_run(s, account_id, mode=mode, join_running=join_running,
                                    queued_stale_seconds=queued_stale_seconds,
                                    running_stale_seconds=running_stale_seconds)
    if not created:
        return PushOutcome(COALESCED, account_id, run_id)
    publish_queued(engine, account_id, run_id, enqueue)
    return PushOutcome(QUEUED, account_id, run_id)


def publish_queued(engine: Engine, account_id: int, run_id: int, enqueue: Callable[[int], None]) -> None:
    """Publish the sync task of a run just queued; if that fails the run is abandoned (later triggers queue
    another) and the error goes up."""
    try:
        enqueue(account_id)
    except BaseException as exc:
        abandon_run(engine, run_id, f"the sync could not be queued: {exc!r}"[:500])
        raise


def start_requested_sync(engine: Engine, account_id: int,
                         stale_seconds: float = RUNNING_STALE_SECONDS) -> tuple[int, str] | None:
    """Called by the sync as it starts: the queued run becomes running (`pipeline.runs.adopt_queued_run`),
    so triggers from now on queue a new one (they may be newer). None when nothing was queued."""
    return adopt_queued_run(engine, account_id, stale_seconds)


def abandon_queued_sync(engine: Engine, account_id: int, reason: str) -> None:
    """The sync cannot start at all (e.g. the account needs to be connected again): its queued run says why."""
    with transaction(engine) as s:
        s.execute(
            update(SyncRun).where(SyncRun.account_id == account_id, SyncRun.status == RUN_QUEUED)
            .values(status="abandoned", error=reason[:2000], finished_at=func.now())
        )


def renew_watch(engine: Engine, account_id: int, client: Any, topic: str) -> None:
    """Gmail stops pushing after 7 days unless watch is called again; daily renewal keeps it alive."""
    _, expires = client.watch(topic)
    with transaction(engine) as s:
        s.execute(update(Account).where(Account.id == account_id).values(watch_expires_at=expires))


def watched_accounts(engine: Engine) -> list[int]:
    with transaction(engine) as s:
        rows = s.execute(select(Account.id).where(Account.kind == "gmail", Account.status == "active"))
        return [int(r) for r in rows.scalars()]


def accounts_to_poll(engine: Engine, busy_seconds: float) -> tuple[list[int], list[int]]:
    """(due, busy): active Gmail accounts for a scheduled poll, and those skipped because a sync of theirs is
    running with its driver heard from in the last `busy_seconds`.

    A poll queued behind a running sync would only retry on the account's lock until the run ends, and a
    full sync can take hours; that run, or the next poll, covers the account. A run whose driver went
    silent does not count: the poll's sync takes it over (pipeline.runs.begin_run)."""
    busy_since = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, busy_seconds)
    with transaction(engine) as s:
        running = select(SyncRun.id).where(SyncRun.account_id == Account.id, SyncRun.status == "running",
                                           SyncRun.heartbeat_at > busy_since).exists()
        rows = s.execute(select(Account.id, running).where(Account.kind == "gmail", Account.status == "active")
                         .order_by(Account.id)).all()
    return [int(a) for a, busy in rows if not busy], [int(a) for a, busy in rows if busy]


__all__ = [
    "PushNotice",
    "accounts_to_poll",
    "PushOutcome",
    "abandon_queued_sync",
    "handle_push",
    "parse_push",
    "publish_queued",
    "renew_watch",
    "request_sync",
    "start_requested_sync",
    "watched_accounts",
]
