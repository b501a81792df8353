"""A sync trigger from the web API: which account, may the caller, is it paused, which run answers it.

Most triggers arrive while a run is already queued or running (a burst coalesces into one run), so
the common answer is read in one statement, without a lock or a transaction: the token's account,
the account, and its active runs. Only when there is no run to join does the trigger take the
account's row lock and decide in one short transaction (`pipeline.runs.queue_run`): the lock makes
concurrent triggers of one account decide one after the other, so they create one run. Its task is
published after the commit; the answer carries the run id either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, text

from pipeline.accounts import NEEDS_REAUTH, reauth_advice
from pipeline.api_auth import TOKEN_PREFIX, account_for_token, token_digest
from pipeline.errors import AccountPausedError, AuthError, BadInputError, NotFoundError, NotSyncableError
from pipeline.push import publish_queued
from pipeline.runs import QUEUED, queue_run
from pipeline.storage.db import transaction
from pipeline.storage.models import RUNNING
from pipeline.syncing import MODES

NO_SUCH_ACCOUNT = "no such account"  # the same words for an unknown account and another tenant's

# Everything the common case needs, in one round trip. The run subqueries mirror queue_run's choice.
_LOOKUP = text(
    "SELECT a.id, a.kind, a.status, a.status_reason, "
    "(SELECT t.account_id FROM api_tokens t WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL), "
    "(SELECT r.id FROM sync_runs r WHERE r.account_id = a.id AND r.status = 'queued' "
    " AND r.heartbeat_at >= now() - make_interval(secs => :qs) AND (:mode <> 'full' OR r.mode = 'full')), "
    "(SELECT r.id FROM sync_runs r WHERE r.account_id = a.id AND r.status = 'running' AND r.source LIKE 'gmail:%' "
    " AND r.heartbeat_at >= now() - make_interval(secs => :rs)) "
    "FROM accounts a WHERE a.email = :email"
)


@dataclass(frozen=True, slots=True)
class Triggered:
    run_id: int
    account_id: int
    account: str
    status: str  # the run's: queued | running
    coalesced: bool  # answered with a run that already existed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_mode(body: Any) -> str:
    """The optional trigger body: {} or {"mode": "auto" | "full" | "incremental"}."""
    if body is None:
        return "auto"
    if not isinstance(body, dict) or set(body) - {"mode"}:
        raise BadInputError('the body must be a JSON object, {} or {"mode": "auto" | "full" | "incremental"}')
    mode = body.get("mode", "auto")
    if mode not in MODES:
        raise BadInputError(f"mode must be one of {', '.join(MODES)}")
    return str(mode)


def trigger_sync(
    engine: Engine,
    email: str,
    enqueue: Callable[[int], None],
    *,
    token: str | None,
    paused_for: Callable[[int], float],
    mode: str = "auto",
    queued_stale_seconds: float,
    running_stale_seconds: float,
) -> Triggered:
    """Answer a trigger for `email` with a run (queued or running), coalescing every trigger that arrives
    before the sync has finished.

    `token`: the caller's bearer token (AuthError unless it is a live one; NotFoundError when it belongs
    to another account, exactly as for an unknown account), or None when the caller is already
    authenticated for `email` by a verified signature. `paused_for(account_id)`: the seconds the
    account's quota is still paused (AccountPausedError when positive).
    """
    email = email.strip().lower()
    digest = token_digest(token) if token is not None and token.startswith(TOKEN_PREFIX) else b""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_LOOKUP, {"email": email, "token_hash": digest, "mode": mode,
                                     "qs": float(queued_stale_seconds), "rs": float(running_stale_seconds)}).first()
    if row is None:
        if token is not None:
            account_for_token(engine, token)  # 401 for a bad token, before saying the account is unknown
        raise NotFoundError(NO_SUCH_ACCOUNT)
    account_id, kind, status, reason, scoped_to, queued_id, running_id = row
    if token is not None:
        if scoped_to is None:
            raise AuthError("unknown or revoked API token")
        if scoped_to != account_id:
            raise NotFoundError(NO_SUCH_ACCOUNT)
    if kind != "gmail":
        raise NotSyncableError(f"{email} is a mailbox-file account: there is nothing to sync, import its "
                               "mailbox instead")
    if status == NEEDS_REAUTH:
        raise NotSyncableError(reauth_advice(email, reason))
    wait = paused_for(account_id)
    if wait > 0:
        raise AccountPausedError(f"Gmail rate-limited {email}: its syncs are paused for {math.ceil(wait)} s",
                                 retry_after=wait)
    if queued_id is not None:
        return Triggered(int(queued_id), account_id, email, QUEUED, coalesced=True)
    if running_id is not None:
        return Triggered(int(running_id), account_id, email, RUNNING, coalesced=True)
    with transaction(engine) as s:
        run_id, created, run_status = queue_run(s, account_id, mode=mode, join_running=True,
                                                queued_stale_seconds=queued_stale_seconds,
                                                running_stale_seconds=running_stale_seconds)
    if created:
        publish_queued(engine, account_id, run_id, enqueue)
    return Triggered(run_id, account_id, email, run_status, coalesced=not created)


__all__ = ["NO_SUCH_ACCOUNT", "Triggered", "parse_mode", "trigger_sync"]
