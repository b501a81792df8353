"""Fetch: the first half of ingest for Gmail windows. Raw bytes of the window's ids, batch by batch.

Each batch's outcome is committed as it arrives (raw and labels onto the window item, or the item
marked gone), so a retried task fetches only what is still missing. Ingest proper then runs on the
saved bytes exactly as for a mailbox file.
"""

from __future__ import annotations

import time
from typing import cast

from sqlalchemy import Engine, Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from pipeline.accounts import mark_needs_reauth
from pipeline.resilience.classify import AUTH, GONE, PERMANENT
from pipeline.runs import StageClaim, record_failure
from pipeline.sources.gmail import FetchOutcome, GmailClient, GmailError
from pipeline.storage.db import transaction
from pipeline.storage.models import Window, WindowItem


def ids_to_fetch(engine: Engine, window_id: int) -> list[str]:
    with transaction(engine) as s:
        rows = s.execute(
            select(WindowItem.gmail_id)
            .where(WindowItem.window_id == window_id, WindowItem.gmail_id.is_not(None),
                   WindowItem.raw.is_(None), WindowItem.outcome.is_(None))
            .order_by(WindowItem.position)
        ).scalars()
        return [str(r) for r in rows]


def fetch_window_for(engine: Engine, claim: StageClaim, client: GmailClient) -> int:
    """Fetch every unfetched item of the claimed window; returns how many were asked for."""
    ids = ids_to_fetch(engine, claim.window_id)
    if not ids:
        return 0
    spent = client.units_spent
    since = time.monotonic()

    def save(outcome: FetchOutcome) -> None:
        nonlocal spent, since
        units, spent = client.units_spent - spent, client.units_spent
        seconds, since = time.monotonic() - since, time.monotonic()
        _save(engine, claim.account_id, claim.run_id, claim.window_id, outcome, units, seconds)

    try:
        client.fetch(ids, save)
    except GmailError as exc:
        if exc.error_class == AUTH:
            mark_needs_reauth(engine, claim.account_id, str(exc)[:300])
        raise
    return len(ids)


# A batch's fetched messages onto their items: one statement executed for all of them (one round trip in
# psycopg's pipeline), on the table rather than the mapped class. An ORM update built per message, which
# also matched its WHERE against the session's objects, was a fifth of an ingest worker's CPU
# (docs/PERFORMANCE.md, sixteenth round).
_ITEMS = cast(Table, WindowItem.__table__)
_SAVE_FETCHED = (
    update(_ITEMS)
    .where(_ITEMS.c.window_id == bindparam("w"), _ITEMS.c.gmail_id == bindparam("g"))
    .values(raw=bindparam("r"), labels=bindparam("l"), gmail_thread_id=bindparam("t"))
)


def _save(engine: Engine, account_id: int, run_id: int, window_id: int, outcome: FetchOutcome, units: int,
          seconds: float) -> None:
    with transaction(engine) as s:
        s.execute(update(Window).where(Window.id == window_id).values(
            quota_units=Window.quota_units + units, fetch_seconds=Window.fetch_seconds + seconds,
            updated_at=func.now()))
        if outcome.fetched:
            s.execute(_SAVE_FETCHED, [{"w": window_id, "g": m.id, "r": m.raw, "l": list(m.label_ids),
                                       "t": m.thread_id} for m in outcome.fetched])
        for mid in outcome.gone:
            _mark(s, window_id, mid, "gone")
            record_failure(s, account_id, run_id, window_id, f"gmail:{mid}", "ingest", GONE,
                           "deleted from the mailbox between listing and fetching (404)")
        for mid, reason in outcome.failed.items():
            _mark(s, window_id, mid, "failed")
            record_failure(s, account_id, run_id, window_id, f"gmail:{mid}", "ingest", PERMANENT, reason)


def _mark(session: Session, window_id: int, gmail_id: str, outcome: str) -> None:
    session.execute(
        update(WindowItem)
        .where(WindowItem.window_id == window_id, WindowItem.gmail_id == gmail_id)
        .values(outcome=outcome)
    )


__all__ = ["fetch_window_for", "ids_to_fetch"]
