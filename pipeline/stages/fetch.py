"""Fetch: the first half of ingest for Gmail windows. Raw bytes of the window's ids, batch by batch.

Each batch's outcome is committed as it arrives (raw and labels onto the window item, or the item
marked gone), so a retried task fetches only what is still missing. Ingest proper then runs on the
saved bytes exactly as for a mailbox file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import cast

from sqlalchemy import Engine, Table, bindparam, func, select, update

from pipeline.accounts import mark_needs_reauth
from pipeline.resilience.classify import AUTH, GONE, PERMANENT
from pipeline.runs import StageClaim, record_failure
from pipeline.sources.gmail import FetchOutcome, GmailClient, GmailError
from pipeline.storage.db import transaction
from pipeline.storage.models import Window, WindowItem


def ids_to_fetch(engine: Engine, window_id: int) -> list[str]:
    """The Gmail ids of the window's items still to fetch, in the window's order."""
    return list(_unfetched(engine, window_id))


def _unfetched(engine: Engine, window_id: int) -> dict[str, list[int]]:
    """Each Gmail id still to fetch with its items' positions: what is saved goes to the items by their
    primary key, not by a search of the window's items for the id."""
    positions: dict[str, list[int]] = {}
    with transaction(engine) as s:
        rows = s.execute(
            select(WindowItem.gmail_id, WindowItem.position)
            .where(WindowItem.window_id == window_id, WindowItem.gmail_id.is_not(None),
                   WindowItem.raw.is_(None), WindowItem.outcome.is_(None))
            .order_by(WindowItem.position)
        )
        for gmail_id, position in rows:
            positions.setdefault(str(gmail_id), []).append(position)
    return positions


def fetch_window_for(engine: Engine, claim: StageClaim, client: GmailClient) -> int:
    """Fetch every unfetched item of the claimed window; returns how many were asked for."""
    positions = _unfetched(engine, claim.window_id)
    if not positions:
        return 0
    spent = client.units_spent
    since = time.monotonic()

    def save(outcome: FetchOutcome) -> None:
        nonlocal spent, since
        units, spent = client.units_spent - spent, client.units_spent
        seconds, since = time.monotonic() - since, time.monotonic()
        _save(engine, claim, positions, outcome, units, seconds)

    try:
        client.fetch(list(positions), save)
    except GmailError as exc:
        if exc.error_class == AUTH:
            mark_needs_reauth(engine, claim.account_id, str(exc)[:300])
        raise
    return len(positions)


# A batch's outcome onto its items, by their primary key: one statement executed for all of them (one
# round trip in psycopg's pipeline), on the table rather than the mapped class. An ORM update built per
# message, which also matched its WHERE against the session's objects, was a fifth of an ingest worker's
# CPU; and a WHERE on the Gmail id read every item of the window to find one (docs/PERFORMANCE.md,
# sixteenth round).
_ITEMS = cast(Table, WindowItem.__table__)
_ITEM = (_ITEMS.c.window_id == bindparam("w")) & (_ITEMS.c.position == bindparam("p"))
_SAVE_FETCHED = update(_ITEMS).where(_ITEM).values(raw=bindparam("r"), labels=bindparam("l"),
                                                   gmail_thread_id=bindparam("t"))
_MARK = update(_ITEMS).where(_ITEM).values(outcome=bindparam("o"))


def _save(engine: Engine, claim: StageClaim, positions: Mapping[str, Sequence[int]], outcome: FetchOutcome,
          units: int, seconds: float) -> None:
    window_id = claim.window_id
    fetched = [{"w": window_id, "p": p, "r": m.raw, "l": list(m.label_ids), "t": m.thread_id}
               for m in outcome.fetched for p in positions.get(m.id, ())]
    marked = [{"w": window_id, "p": p, "o": state}
              for ids, state in ((outcome.gone, "gone"), (outcome.failed, "failed"))
              for mid in ids for p in positions.get(mid, ())]
    with transaction(engine) as s:
        s.execute(update(Window).where(Window.id == window_id).values(
            quota_units=Window.quota_units + units, fetch_seconds=Window.fetch_seconds + seconds,
            updated_at=func.now()))
        if fetched:
            s.execute(_SAVE_FETCHED, fetched)
        if marked:
            s.execute(_MARK, marked)
        for mid in outcome.gone:
            record_failure(s, claim.account_id, claim.run_id, window_id, f"gmail:{mid}", "ingest", GONE,
                           "deleted from the mailbox between listing and fetching (404)")
        for mid, reason in outcome.failed.items():
            record_failure(s, claim.account_id, claim.run_id, window_id, f"gmail:{mid}", "ingest", PERMANENT,
                           reason)


__all__ = ["fetch_window_for", "ids_to_fetch"]
