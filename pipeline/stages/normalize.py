"""Normalize: parse each ingested message fully, store its fields and put it in a thread."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
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


def normalize_window(session: Session, claim: StageClaim) -> dict[str, int]:
    own = own_addresses(session, claim.account_id)
    parsed: list[tuple[Message, ParsedMessage]] = []
    for message in window_messages(session, claim.window_id, Message.normalized_at):
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
    touched: set[int] = set()
    # The threads given to this window's messages so far, by Message-ID: a reply finds its parent's
    # thread here when both are in the window. Without it each lookup had to autoflush the previous
    # message's UPDATE first, one round trip per message; now the updates go out together.
    assigned: dict[str, int] = {}
    with session.no_autoflush:
        for message, p in parsed:
            thread_id = assign_thread(session, claim.account_id, p, assigned)
            touched.add(thread_id)
            _store(session, message, p, thread_id, own)
            if p.message_id:
                assigned.setdefault(p.message_id, thread_id)
    session.flush()
    refresh_threads(session, sorted(touched))
    return {}


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


def assign_thread(session: Session, account_id: int, p: ParsedMessage, known: Mapping[str, int] | None = None) -> int:
    """The thread of a message: Gmail's thread id, else the thread of a message it refers to, else its key.

    `known`: threads of messages not flushed yet (this window's), by Message-ID, looked up first.
    """
    if not p.gmail_thread_id:
        referenced = [r for r in [p.in_reply_to, *reversed(p.references)] if r]
        for ref in referenced:
            if known and ref in known:
                return known[ref]
        if referenced:
            existing = session.execute(
                select(Message.thread_id)
                .where(
                    Message.account_id == account_id,
                    Message.rfc_message_id.in_(referenced),
                    Message.thread_id.is_not(None),
                )
                .limit(1)
            ).scalar()
            if existing is not None:
                return int(existing)
    tkey = thread_key(p)
    thread_id = session.execute(
        pg_insert(Thread)
        .values(account_id=account_id, thread_key=tkey, subject=p.subject or "")
        .on_conflict_do_nothing(index_elements=[Thread.account_id, Thread.thread_key])
        .returning(Thread.id)
    ).scalar()
    if thread_id is None:
        thread_id = session.execute(
            select(Thread.id).where(Thread.account_id == account_id, Thread.thread_key == tkey)
        ).scalar_one()
    return int(thread_id)


def _store(session: Session, message: Message, p: ParsedMessage, thread_id: int, own: frozenset[str]) -> None:
    from_email = canonical_email(p.from_.email) if p.from_ else None
    message.thread_id = thread_id
    message.rfc_message_id = p.message_id
    message.sent_at = p.date
    message.subject = _clean(p.subject)
    message.from_email = from_email
    message.from_name = _clean(p.from_.name) if p.from_ else None
    message.recipients = {
        "to": _pairs(p.to), "cc": _pairs(p.cc), "bcc": _pairs(p.bcc), "reply_to": _pairs(p.reply_to),
    }
    message.in_reply_to = p.in_reply_to
    message.references = p.references
    message.content_type = p.content_type[:128]
    message.category = classify_message(p)
    message.is_bulk = is_bulk(p)
    message.from_me = bool(from_email and from_email in own)
    if message.gmail_id is None:
        # Labels from the Gmail API are authoritative (an archived, read message has none at all);
        # a mailbox file's come from its X-Gmail-Labels header.
        message.labels = p.labels or message.labels
    message.full_text = _clean(p.text)
    message.stripped_text = _clean(p.stripped)
    message.attachments = [
        {"filename": a.filename, "content_type": a.content_type, "size": a.size} for a in p.attachments
    ]
    message.defects = [_clean(d) for d in p.defects]
    message.normalized_at = func.now()


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


__all__ = ["normalize_window", "window_messages", "assign_thread", "refresh_threads", "mark_messages"]
