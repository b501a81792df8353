"""Triggered Gmail syncs (push, beat, web hook), beat's poll of every account, and watch renewal: the `sync` queue."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from celery.signals import task_revoked

from pipeline.accounts import gmail_client
from pipeline.errors import MailpipeError, RunConflictError
from pipeline.push import (
    abandon_queued_sync,
    accounts_to_poll,
    renew_watch,
    request_sync,
    start_requested_sync,
    watched_accounts,
)
from pipeline.syncing import sync_account
from tasks import context
from tasks.app import app
from tasks.chains import dispatch_window
from tasks.config import REQUEST_PUBLISH_RETRY_POLICY

log = logging.getLogger(__name__)

RUN_CONFLICT_COUNTDOWN = 30.0
SYNC_TIME_LIMIT = 24 * 3600  # a full sync of a large mailbox at the 2026 quota takes hours


# Not acks_late: a sync drives a whole run; redelivered after a crash it would race the run's
# takeover. A lost sync leaves its run queued: a trigger after Settings.sync_queued_stale_seconds
# abandons it and queues a new one, which resumes the work (known ids are not fetched again).
@app.task(bind=True, name="mailpipe.sync", acks_late=False, time_limit=SYNC_TIME_LIMIT,
          soft_time_limit=SYNC_TIME_LIMIT - 60)
def sync(self: Task, account_id: int, mode: str = "auto") -> dict[str, Any]:
    engine, settings = context.engine(), context.settings()
    try:
        client = gmail_client(engine, settings, account_id)
    except MailpipeError as exc:  # e.g. the grant was refused: the queued run (and the API) says why
        abandon_queued_sync(engine, account_id, f"the sync could not start: {exc}")
        raise
    try:
        # The run a trigger queued (its id already answered to the web API) becomes this sync's run.
        adopted = start_requested_sync(engine, account_id, settings.run_stale_seconds)
        run_id, mode = adopted if adopted else (None, mode)
        summary = sync_account(engine, settings, account_id, client, dispatch_window, mode=mode, run_id=run_id)
    except RunConflictError as exc:
        raise self.retry(countdown=RUN_CONFLICT_COUNTDOWN, max_retries=120, exc=exc) from exc
    return summary.as_dict()


def enqueue_sync(account_id: int) -> None:
    sync.apply_async((account_id,))


def publish_sync(account_id: int) -> None:
    """Publish a sync for a request being answered (the web API): a broker that does not answer within
    about a second fails the request (503) instead of holding it for the stages' long retry policy."""
    sync.apply_async((account_id,), retry_policy=REQUEST_PUBLISH_RETRY_POLICY)


def trigger_sync(account_id: int) -> str:
    """Queue a sync unless one is queued already; the status says which."""
    settings = context.settings()
    return request_sync(context.engine(), account_id, enqueue_sync,
                        queued_stale_seconds=settings.sync_queued_stale_seconds,
                        running_stale_seconds=settings.run_stale_seconds).status


@app.task(name="mailpipe.schedule_syncs")
def schedule_syncs() -> dict[str, str]:
    """Beat's poll: an incremental sync of every active Gmail account (push can be late or lost).

    Each starts after a random countdown within the jitter window, so accounts do not all call Google
    and take the sync workers at the same instant, and expires one interval after it was due: a sync
    still queued then is superseded by the next round. A sync already queued (push, web hook) absorbs
    this one (`request_sync`); an account whose sync is running is left to it."""
    engine, settings = context.engine(), context.settings()
    interval = settings.gmail_sync_interval_seconds
    jitter = min(settings.gmail_sync_jitter_seconds, interval)
    due, busy = accounts_to_poll(engine, settings.run_stale_seconds)
    outcomes = dict.fromkeys(map(str, busy), "running")
    for account_id in due:
        countdown = random.uniform(0.0, jitter)

        def enqueue(account: int, countdown: float = countdown) -> None:
            sync.apply_async((account,), countdown=countdown, expires=countdown + max(interval, 1.0))

        outcomes[str(account_id)] = request_sync(
            engine, account_id, enqueue, queued_stale_seconds=settings.sync_queued_stale_seconds,
            running_stale_seconds=settings.run_stale_seconds).status
    return outcomes


@task_revoked.connect
def _sync_expired(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """A queued sync dropped because it expired never ran: its queued run is abandoned, so the account's
    triggers queue a new one at once.

    (A sync lost outright, with a worker that crashed holding it, is abandoned by the watchdog after
    `sync_queued_stale_seconds`.)"""
    if not expired or getattr(sender, "name", None) != "mailpipe.sync":
        return
    args = getattr(request, "args", None) or ()
    if args:
        abandon_queued_sync(context.engine(), int(args[0]), "its sync task expired before a worker took it")


@app.task(name="mailpipe.renew_watches")
def renew_watches() -> int:
    engine, settings = context.engine(), context.settings()
    if not settings.gmail_push_topic:
        return 0
    renewed = 0
    for account_id in watched_accounts(engine):
        try:
            renew_watch(engine, account_id, gmail_client(engine, settings, account_id), settings.gmail_push_topic)
            renewed += 1
        except MailpipeError as exc:  # one account's trouble must not stop the others' renewal
            log.warning("watch renewal for account %s failed: %s", account_id, exc)
    return renewed
