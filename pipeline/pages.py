"""Pages of the web API's lists: keyset pagination behind opaque cursors, never `count(*)`.

A page asks for one row more than it returns: that row's existence is `has_more`, and the last row
returned is the cursor's key. The cursor is base64url JSON naming the list it belongs to and the key
values, so a cursor stays valid however many rows arrive or leave before it (a keyset page never
skips or repeats a row because of an insertion elsewhere). It is not a secret and grants nothing:
every query is also filtered by the caller's account.

Search is the exception: fused ranks have no key to seek to. A search page is an offset into the
ranking of at most SEARCH_MAX_RESULTS hits, recomputed for every page, and its cursor holds the
offset and a fingerprint of the query and filters (a cursor used with another query is refused). Mail
arriving between two pages can shift the ranking, so a hit may then repeat or be missed; the
result is bounded because ranking deeper than a couple of hundred fused candidates means nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, and_, func, literal, literal_column, or_, select, tuple_

from pipeline.embeddings import Embedder
from pipeline.errors import BadInputError, NotFoundError
from pipeline.insights.views import MESSAGE_TEXT_CHARS, insight_dict
from pipeline.reports import CONTACT_COLUMNS, contact_row
from pipeline.search import SearchFilters, search
from pipeline.storage.db import reading
from pipeline.storage.models import STAGES, Contact, Insight, Message, SyncRun, Thread, Window

MAX_PAGE = 200
SEARCH_MAX_RESULTS = 200
SEARCH_MAX_PAGE = 50


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # what the list is of (a thread's fields, a query)

    def as_dict(self) -> dict[str, Any]:
        return {**self.extra, "items": self.items, "has_more": self.has_more, "next_cursor": self.next_cursor}


def encode_cursor(kind: str, key: list[Any]) -> str:
    raw = json.dumps({"k": kind, "v": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str, arity: int) -> list[Any] | None:
    """The key values of a cursor of this list, None without one; BadInputError for anything else."""
    if cursor is None:
        return None
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        data = json.loads(raw)
        values = data["v"]
        if data["k"] != kind or not isinstance(values, list) or len(values) != arity:
            raise ValueError(kind)
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadInputError("cursor: not a cursor of this list (pass next_cursor as it was returned)") from None
    return values


def _check_limit(limit: int, most: int = MAX_PAGE) -> None:
    if not 1 <= limit <= most:
        raise BadInputError(f"limit must be between 1 and {most}")


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        raise BadInputError("cursor: not a cursor of this list") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInputError("cursor: not a cursor of this list")
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _page(rows: list[Any], limit: int, kind: str, key: Any, render: Any, extra: dict[str, Any] | None = None) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(kind, key(rows[-1])) if more else None
    return Page([render(r) for r in rows], more, cursor, extra or {})


# ---------------------------------------------------------------- contacts


def contacts_page(bind: Engine | Connection, account_id: int, limit: int, cursor: str | None,
                  half_life_days: float) -> Page:
    """Contacts by rank (the stored, time-invariant rank key), highest first; ties by id."""
    _check_limit(limit)
    after = decode_cursor(cursor, "contacts", 2)
    q = select(*CONTACT_COLUMNS).where(Contact.account_id == account_id, Contact.rank_key.is_not(None))
    if after is not None:
        if not isinstance(after[0], int | float) or isinstance(after[0], bool):
            raise BadInputError("cursor: not a cursor of this list")
        rank, cid = float(after[0]), _int(after[1])
        # `rank_key <= rank` repeats the OR's bound so the index (account_id, rank_key) starts the scan
        # at the cursor: with the OR alone every page re-read all the rows before it.
        q = q.where(Contact.rank_key <= rank,
                    or_(Contact.rank_key < rank, and_(Contact.rank_key == rank, Contact.id > cid)))
    with reading(bind) as conn:
        rows = list(conn.execute(q.order_by(Contact.rank_key.desc(), Contact.id).limit(limit + 1)))
    now = datetime.now(UTC)

    def render(c: Any) -> dict[str, Any]:
        return {"id": c.id, **contact_row(c, now, half_life_days).as_dict()}

    return _page(rows, limit, "contacts", lambda c: [c.rank_key, c.id], render)


# ---------------------------------------------------------------- threads


# Threads newest first, undated ones last: ordered by this expression, which the partial index
# ix_threads_account_page (migration 0010) holds, so a page is an index range from the cursor on.
# (A literal, not a parameter: only the same constant matches the index's expression.)
_NEVER = literal_column("'-infinity'::timestamptz", DateTime(timezone=True))
_THREAD_ORDER = func.coalesce(Thread.last_at, _NEVER)


def threads_page(bind: Engine | Connection, account_id: int, limit: int, cursor: str | None) -> Page:
    """The account's threads, latest message first (undated ones last)."""
    _check_limit(limit)
    after = decode_cursor(cursor, "threads", 2)
    # The shown columns, not Thread and Insight objects: an insight object brings its summary and action
    # items for every row of the page.
    q = select(Thread.id, Thread.subject, Thread.message_count, Thread.first_at, Thread.last_at,
               Insight.category, Insight.needs_reply).outerjoin(Insight, Insight.thread_id == Thread.id).where(
        Thread.account_id == account_id, Thread.message_count > 0)
    if after is not None:
        at = _time(after[0])
        bound = _NEVER if at is None else literal(at, DateTime(timezone=True))
        q = q.where(tuple_(_THREAD_ORDER, Thread.id) < tuple_(bound, _int(after[1])))
    with reading(bind) as conn:
        rows = list(conn.execute(q.order_by(_THREAD_ORDER.desc(), Thread.id.desc()).limit(limit + 1)))

    def render(t: Any) -> dict[str, Any]:
        return {"id": t.id, "subject": t.subject, "message_count": t.message_count, "first_at": _iso(t.first_at),
                "last_at": _iso(t.last_at), "category": t.category, "needs_reply": t.needs_reply}

    return _page(rows, limit, "threads", lambda t: [_iso(t.last_at), t.id], render)


# A thread's fields and its insight's, one row: insight_dict reads both from it (no name is shared).
_THREAD_WITH_INSIGHT = (Thread.id, Thread.account_id, Thread.subject, Thread.message_count, Thread.first_at,
                        Thread.last_at, Insight.thread_id.label("insight_of"), Insight.category, Insight.needs_reply,
                        Insight.summary, Insight.action_items, Insight.source, Insight.summarized_messages,
                        Insight.updated_at)


def thread_page(bind: Engine | Connection, account_id: int, thread_id: int, limit: int, cursor: str | None) -> Page:
    """One thread of the account: its fields and insight, and a page of its messages in date order
    (undated ones first, as `mailpipe thread` shows them). Another account's thread is NotFoundError.

    Two statements outside a transaction: a message arriving between them shows in the page and not yet
    in the thread's count, as it would under READ COMMITTED."""
    _check_limit(limit)
    after = decode_cursor(cursor, f"thread:{thread_id}", 2)
    with reading(bind) as conn:
        thread = conn.execute(  # the thread and its insight in one statement
            select(*_THREAD_WITH_INSIGHT).outerjoin(Insight, Insight.thread_id == Thread.id)
            .where(Thread.id == thread_id)
        ).first()
        if thread is None or thread.account_id != account_id:
            raise NotFoundError("no such thread")
        # The columns shown, the text cut in SQL: a whole Message would bring its raw bytes, both
        # texts and its tsvector from TOAST for every message of the page.
        q = select(Message.id, Message.rfc_message_id, Message.message_key, Message.sent_at, Message.from_email,
                   Message.from_name, Message.from_me, Message.subject, Message.labels, Message.category,
                   func.left(func.coalesce(func.nullif(Message.stripped_text, ""), Message.full_text, ""),
                             MESSAGE_TEXT_CHARS).label("text")
                   ).where(Message.thread_id == thread_id, Message.account_id == account_id)
        if after is not None:
            at, mid = _time(after[0]), _int(after[1])
            if at is None:
                q = q.where(or_(and_(Message.sent_at.is_(None), Message.id > mid), Message.sent_at.is_not(None)))
            else:
                q = q.where(or_(Message.sent_at > at, and_(Message.sent_at == at, Message.id > mid)))
        rows = list(conn.execute(q.order_by(Message.sent_at.asc().nulls_first(), Message.id).limit(limit + 1)))
    extra = {
        "id": thread.id, "subject": thread.subject, "message_count": thread.message_count,
        "first_at": _iso(thread.first_at), "last_at": _iso(thread.last_at),
        "insight": insight_dict(thread, thread) if thread.insight_of is not None else None,
    }

    def render(m: Any) -> dict[str, Any]:
        return {"id": m.id, "message_id": m.rfc_message_id or m.message_key, "date": _iso(m.sent_at),
                "from": m.from_email, "from_name": m.from_name, "from_me": bool(m.from_me), "subject": m.subject,
                "labels": list(m.labels or []), "category": m.category, "text": m.text}

    return _page(rows, limit, f"thread:{thread_id}", lambda m: [_iso(m.sent_at), m.id], render, extra)


# ---------------------------------------------------------------- a run's windows


# The columns a windows page shows, read as a row: the page needs no Window object.
_WINDOW_COLUMNS = (Window.seq, Window.size, Window.finished, *(getattr(Window, st) for st in STAGES), Window.attempts,
                   Window.new_messages, Window.duplicates, Window.failed, Window.chunks_embedded, Window.error,
                   Window.updated_at)


def windows_page(bind: Engine | Connection, account_id: int, run_id: int, limit: int, cursor: str | None) -> Page:
    """A run's windows in order, each with its stages' states. Another account's run is NotFoundError."""
    _check_limit(limit)
    after = decode_cursor(cursor, f"windows:{run_id}", 1)
    with reading(bind) as conn:
        owner = conn.execute(select(SyncRun.account_id).where(SyncRun.id == run_id)).scalar()
        if owner != account_id:
            raise NotFoundError("no such run")
        q = select(*_WINDOW_COLUMNS).where(Window.run_id == run_id)
        if after is not None:
            q = q.where(Window.seq > _int(after[0]))
        rows = list(conn.execute(q.order_by(Window.seq).limit(limit + 1)))

    def render(w: Any) -> dict[str, Any]:
        return {"seq": w.seq, "size": w.size, "finished": w.finished,
                "stages": {st: getattr(w, st) for st in STAGES}, "attempts": dict(w.attempts or {}),
                "new_messages": w.new_messages, "duplicates": w.duplicates, "failed": w.failed,
                "chunks_embedded": w.chunks_embedded, "error": w.error, "updated_at": _iso(w.updated_at)}

    return _page(rows, limit, f"windows:{run_id}", lambda w: [w.seq], render, {"run_id": run_id})


# ---------------------------------------------------------------- search


def _fingerprint(query: str, filters: SearchFilters) -> str:
    basis = json.dumps([query, filters.sender, _iso(filters.after), _iso(filters.before), list(filters.labels)])
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def search_page(engine: Engine, account_id: int, query: str, filters: SearchFilters, limit: int,
                cursor: str | None, embedder: Embedder | None) -> Page:
    """A page of the account's hybrid search hits (one per thread), by offset into a bounded ranking."""
    _check_limit(limit, SEARCH_MAX_PAGE)
    query = query.strip()
    if not query:
        raise BadInputError("q: give something to search for")
    fingerprint = _fingerprint(query, filters)
    after = decode_cursor(cursor, "search", 2)
    offset = 0
    if after is not None:
        if after[0] != fingerprint:
            raise BadInputError("cursor: it belongs to another query or other filters")
        offset = _int(after[1])
        if not 0 < offset < SEARCH_MAX_RESULTS:
            raise BadInputError("cursor: not a cursor of this list")
    want = min(offset + limit + 1, SEARCH_MAX_RESULTS)
    hits = search(engine, query, account_id=account_id, limit=want, embedder=embedder, filters=filters)
    page = hits[offset:offset + limit]
    more = len(hits) > offset + limit
    next_cursor = encode_cursor("search", [fingerprint, offset + limit]) if more else None
    extra = {"query": query, "filters": {"from": filters.sender, "after": _iso(filters.after),
                                         "before": _iso(filters.before), "labels": list(filters.labels)}}
    return Page([h.as_dict() for h in page], more, next_cursor, extra)


__all__ = [
    "MAX_PAGE",
    "SEARCH_MAX_PAGE",
    "SEARCH_MAX_RESULTS",
    "Page",
    "contacts_page",
    "decode_cursor",
    "encode_cursor",
    "search_page",
    "thread_page",
    "threads_page",
    "windows_page",
]
