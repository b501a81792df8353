"""Normalize: parse each ingested message fully, store its fields and put it in a thread."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ARRAY, Row, Table, Text, bindparam, case, func, select, text, update
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.contacts import canonical_email, is_bulk
from pipeline.errors import ParseError
from pipeline.insights.rules import classify_message
from pipeline.normalize import parse_message
from pipeline.normalize.threading import thread_key
from pipeline.records import Address, ParsedMessage
from pipeline.runs import StageClaim, record_failure
from pipeline.storage.models import Account, Message, Thread, WindowItem

THREAD_LOCK_NAMESPACE = 7_240_002  # advisory lock: thread assignment for one account, one window at a time


def window_messages(session: Session, window_id: int, pending_column: Any) -> list[Message]:
    """The window's messages (new or already known) that a stage has not processed yet."""
    return list(
        session.execute(
            select(Message)
            .join(WindowItem, WindowItem.message_id == Message.id)
            .where(WindowItem.window_id == window_id, pending_column.is_(None))
            .order_by(Message.id)
        )
        .scalars()
        .unique()
    )


def window_message_rows(session: Session, window_id: int, pending_column: Any, *columns: Any) -> list[Row[Any]]:
    """`id` and `columns` of the window's normalized messages that a stage has not processed yet, in id
    order, each once: what the later stages read, without loading whole rows (raw bytes, texts)."""
    rows = session.execute(
        select(Message.id, *columns)
        .join(WindowItem, WindowItem.message_id == Message.id)
        .where(WindowItem.window_id == window_id, pending_column.is_(None), Message.normalized_at.is_not(None))
        .order_by(Message.id)
    ).all()
    return [r for i, r in enumerate(rows) if i == 0 or rows[i - 1][0] != r[0]]


def normalize_window(session: Session, claim: StageClaim) -> dict[str, int]:
    own = own_addresses(session, claim.account_id)
    parsed: list[tuple[_Pending, ParsedMessage]] = []
    for message in _pending(session, claim.window_id):
        try:
            parsed.append((message, parse_message(message.raw, gmail_thread_id=message.gmail_thread_id,
                                                  labels=tuple(message.labels))))
        except ParseError as exc:
            record_failure(session, claim.account_id, claim.run_id, claim.window_id, message.source_ref,
                           "normalize", "permanent", str(exc))
    # Parents before replies, so a reply finds its parent's thread when both are in this window.
    parsed.sort(key=lambda mp: (mp[1].date is None, mp[1].date or datetime.min))
    session.execute(text("SELECT pg_advisory_xact_lock(:ns, :acct)"), {"ns": THREAD_LOCK_NAMESPACE,
                                                                     "acct": claim.account_id})
    thread_ids = assign_threads(session, claim.account_id, [p for _, p in parsed])
    if parsed:
        # One statement for the window (psycopg sends the rows in one pipeline); row by row, the
        # updates and thread look-ups were two thirds of the stage's time, mostly waiting on PostgreSQL.
        session.execute(_UPDATE, [_row(m.id, p, t, own) for (m, p), t in zip(parsed, thread_ids, strict=True)])
    refresh_threads(session, sorted(set(thread_ids)))
    return {}


@dataclass(frozen=True, slots=True)
class _Pending:
    """What normalize reads of a message it has not processed yet (not the whole row: no old texts)."""

    id: int
    source_ref: str
    raw: bytes
    gmail_thread_id: str | None
    labels: list[str]


def _pending(session: Session, window_id: int) -> list[_Pending]:
    rows = session.execute(
        select(Message.id, Message.source_ref, Message.raw, Message.gmail_thread_id, Message.labels)
        .join(WindowItem, WindowItem.message_id == Message.id)
        .where(WindowItem.window_id == window_id, Message.normalized_at.is_(None))
        .order_by(Message.id)
    )
    out: list[_Pending] = []
    for row in rows:
        if not out or out[-1].id != row[0]:  # two items of a window can hold the same message
            out.append(_Pending(int(row[0]), row[1], row[2], row[3], list(row[4] or [])))
    return out


_MESSAGES = cast(Table, Message.__table__)
_C = _MESSAGES.c
# By primary key, with the values of one message per parameter set. Labels from the Gmail API are
# authoritative (an archived, read message has none at all); a mailbox file's come from its
# X-Gmail-Labels header, and only replace the row's when it has some (p_labels NULL otherwise).
_UPDATE = (
    update(_MESSAGES)
    .where(_C.id == bindparam("p_id"))
    .values(
        thread_id=bindparam("p_thread_id"), rfc_message_id=bindparam("p_rfc_message_id"),
        sent_at=bindparam("p_sent_at"), subject=bindparam("p_subject"), from_email=bindparam("p_from_email"),
        from_name=bindparam("p_from_name"), recipients=bindparam("p_recipients", type_=_C.recipients.type),
        in_reply_to=bindparam("p_in_reply_to"), references=bindparam("p_references", type_=_C.references.type),
        content_type=bindparam("p_content_type"), category=bindparam("p_category"), is_bulk=bindparam("p_is_bulk"),
        from_me=bindparam("p_from_me"),
        labels=case((_C.gmail_id.is_(None), func.coalesce(cast_(bindparam("p_labels", type_=ARRAY(Text)),
                                                                ARRAY(Text)), _C.labels)), else_=_C.labels),
        full_text=bindparam("p_full_text"), stripped_text=bindparam("p_stripped_text"),
        attachments=bindparam("p_attachments", type_=_C.attachments.type),
        defects=bindparam("p_defects", type_=_C.defects.type), normalized_at=func.now(),
    )
)


def _row(message_id: int, p: ParsedMessage, thread_id: int, own: frozenset[str]) -> dict[str, Any]:
    from_email = canonical_email(p.from_.email) if p.from_ else None
    return {
        "p_id": message_id, "p_thread_id": thread_id, "p_rfc_message_id": p.message_id, "p_sent_at": p.date,
        "p_subject": _clean(p.subject), "p_from_email": from_email,
        "p_from_name": _clean(p.from_.name) if p.from_ else None,
        "p_recipients": {"to": _pairs(p.to), "cc": _pairs(p.cc), "bcc": _pairs(p.bcc),
                         "reply_to": _pairs(p.reply_to)},
        "p_in_reply_to": p.in_reply_to, "p_references": p.references, "p_content_type": p.content_type[:128],
        "p_category": classify_message(p), "p_is_bulk": is_bulk(p),
        "p_from_me": bool(from_email and from_email in own), "p_labels": p.labels or None,
        "p_full_text": _clean(p.text), "p_stripped_text": _clean(p.stripped),
        "p_attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size}
                          for a in p.attachments],
        "p_defects": [_clean(d) for d in p.defects],
    }


def mark_messages(session: Session, message_ids: list[int], mark: Any) -> None:
    """Set a stage's mark (e.g. Message.contacts_at) on these messages: one UPDATE, in the caller's transaction.

    Set object by object, the ORM sent one UPDATE per message (a SQL expression's value cannot be batched).
    """
    if message_ids:
        session.execute(update(Message).where(Message.id.in_(message_ids)).values({mark: func.now()})
                        .execution_options(synchronize_session=False))


def own_addresses(session: Session, account_id: int) -> frozenset[str]:
    addresses = session.execute(select(Account.own_addresses).where(Account.id == account_id)).scalar_one()
    return frozenset(c for c in (canonical_email(a) for a in addresses) if c)


def assign_threads(session: Session, account_id: int, parsed: list[ParsedMessage]) -> list[int]:
    """The thread of each message, in order: Gmail's thread id, else the thread of a message it refers
    to (one of these, an earlier one of the list, else one held already), else its thread key.

    Call with the account's thread lock held, parents before replies. Two statements for the list
    (three when threads are new), whatever its length.
    """
    refs_of = [[] if p.gmail_thread_id else [r for r in [p.in_reply_to, *reversed(p.references)] if r]
               for p in parsed]
    held = _held_threads(session, account_id, sorted({r for refs in refs_of for r in refs}))
    # A message's thread: an id already known, or a thread key resolved below. Message-IDs of the
    # list map to their thread as soon as they are seen, so a reply later in the list finds it.
    chosen: list[int | str] = []
    seen: dict[str, int | str] = {}
    for p, refs in zip(parsed, refs_of, strict=True):
        found = next((seen[r] for r in refs if r in seen), None)
        if found is None:
            found = next((held[r] for r in refs if r in held), None)
        if found is None:
            found = thread_key(p)
        chosen.append(found)
        if p.message_id:
            seen.setdefault(p.message_id, found)
    subjects: dict[str, str] = {}
    for p, c in zip(parsed, chosen, strict=True):
        if isinstance(c, str):
            subjects.setdefault(c, p.subject or "")  # a new thread takes its first message's subject
    ids = _thread_ids(session, account_id, subjects)
    return [c if isinstance(c, int) else ids[c] for c in chosen]


def _held_threads(session: Session, account_id: int, refs: list[str]) -> dict[str, int]:
    """Threads of messages already normalized, by their Message-ID."""
    if not refs:
        return {}
    rows = session.execute(
        select(Message.rfc_message_id, Message.thread_id)
        .where(Message.account_id == account_id, Message.rfc_message_id.in_(refs), Message.thread_id.is_not(None))
        .order_by(Message.id)
    )
    held: dict[str, int] = {}
    for rfc_id, thread_id in rows:
        held.setdefault(str(rfc_id), int(cast(int, thread_id)))
    return held


# Built once, executed with a parameter set per thread (batched by SQLAlchemy into multi-row INSERTs):
# built per window with .values([...]) it was compiled anew for each window's number of new threads.
_THREADS = cast(Table, Thread.__table__)
_INSERT_THREADS = (
    pg_insert(_THREADS).on_conflict_do_nothing(index_elements=[_THREADS.c.account_id, _THREADS.c.thread_key])
    .returning(_THREADS.c.thread_key, _THREADS.c.id)
)


def _thread_ids(session: Session, account_id: int, subjects: dict[str, str]) -> dict[str, int]:
    """Ids of the threads with these keys, created (with the given subject) where missing."""
    if not subjects:
        return {}
    keys = list(subjects)
    ids = _existing_threads(session, account_id, keys)
    missing = [k for k in keys if k not in ids]
    if missing:
        rows = session.execute(
            _INSERT_THREADS, [{"account_id": account_id, "thread_key": k, "subject": subjects[k]} for k in missing]
        )
        ids.update({str(k): int(i) for k, i in rows})
        if len(ids) < len(keys):  # inserted meanwhile by a writer that does not take the lock
            ids.update(_existing_threads(session, account_id, [k for k in keys if k not in ids]))
    return ids


def _existing_threads(session: Session, account_id: int, keys: list[str]) -> dict[str, int]:
    rows = session.execute(
        select(Thread.thread_key, Thread.id).where(Thread.account_id == account_id, Thread.thread_key.in_(keys))
    )
    return {str(k): int(i) for k, i in rows}


def refresh_threads(session: Session, thread_ids: list[int]) -> None:
    """Recompute thread aggregates from their messages (derived, so they cannot drift)."""
    if not thread_ids:
        return
    session.execute(
        text(
            "UPDATE threads t SET message_count = agg.n, first_at = agg.first_at, last_at = agg.last_at, "
            "subject = coalesce(nullif(agg.subject, ''), t.subject) "
            "FROM (SELECT thread_id, count(*) AS n, min(sent_at) AS first_at, max(sent_at) AS last_at, "
            "      (array_agg(subject ORDER BY sent_at NULLS LAST))[1] AS subject "
            "      FROM messages WHERE thread_id = ANY(:ids) GROUP BY thread_id) agg "
            "WHERE t.id = agg.thread_id"
        ),
        {"ids": thread_ids},
    )


def _pairs(addresses: list[Address]) -> list[list[str]]:
    return [[_clean(a.name), a.email] for a in addresses]


def _clean(value: str) -> str:
    # PostgreSQL text cannot hold NUL; mail sometimes does.
    return value.replace("\x00", "") if value else value


__all__ = ["normalize_window", "window_messages", "window_message_rows", "assign_threads", "refresh_threads",
           "mark_messages"]
