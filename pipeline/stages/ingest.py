"""Ingest: move each saved message reference into `messages`, deduplicated by RFC Message-ID.

Only the header block is parsed here (for the Message-ID); the full parse is normalize's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.errors import ParseError
from pipeline.normalize import message_key, parse_message
from pipeline.normalize.headers import parse_message_id
from pipeline.records import ParsedMessage
from pipeline.resilience.classify import TRANSIENT, ClassifiedError
from pipeline.runs import StageClaim, record_failure
from pipeline.storage.models import GmailAlias, Message, WindowItem

_HEADER_PARSER = BytesHeaderParser(policy=compat32)
# A line end followed by another, whole: the empty line that ends the header block, however lines end
# (the parser splits at CRLF, CR and LF alike; a CRLF followed by a line end contains one of these too).
_EMPTY_LINE_RE = re.compile(rb"\n(?:\r\n|\r|\n)|\r(?:\r\n|\r)")


def header_block(raw: bytes) -> bytes:
    """The message up to and including its first empty line (all of it when it has none).

    The header parser reads the body line by line even when only headers are asked for; parsing this
    instead gives the same headers without that: 114.5 -> 95.1 µs a message on the benches' generated
    mail, 118.9 -> 67.3 on the sample mailbox (ad-hoc timeit; docs/PERFORMANCE.md, sixteenth round)."""
    end = _EMPTY_LINE_RE.search(raw)
    return raw if end is None else raw[: end.end()]


def identify(raw: bytes) -> tuple[str, str | None]:
    """The message's key and its RFC Message-ID (None when it has none)."""
    if not raw.strip():
        raise ParseError("empty message")
    headers = _HEADER_PARSER.parsebytes(header_block(raw))
    if not headers.keys():
        raise ParseError("no header found")
    message_id = parse_message_id(headers.get("Message-ID"))
    if message_id is not None:
        return message_key(ParsedMessage(message_id=message_id, subject="", from_=None)), message_id
    return message_key(parse_message(raw)), None  # rare: the key is a hash of the content

def ingest_window(session: Session, claim: StageClaim) -> dict[str, int]:
    items = session.execute(
        select(WindowItem)
        .where(WindowItem.window_id == claim.window_id, WindowItem.outcome.is_(None))
        .order_by(WindowItem.position)
    ).scalars()
    # The items' own updates wait for one flush at the end: an autoflush before every upsert cost a
    # round trip per message (a fifth of an ingest worker's time), flushed together they go as one batch.
    with session.no_autoflush:
        _ingest_items(session, claim, items)
    session.flush()
    # Counters are totals over the window's items, so a redelivered task recounts, never adds.
    totals = _item_totals(session, claim.window_id)
    return {"new_messages": totals["new"], "duplicates": totals["duplicate"], "failed": totals["failed"]}


def _ingest_items(session: Session, claim: StageClaim, items: Iterable[WindowItem]) -> None:
    identified: list[_Entry] = []
    for item in items:
        if item.raw is None and item.gmail_id is not None:
            # The fetch step did not finish this item; the task retries the fetch, never skips it.
            raise ClassifiedError(f"gmail message {item.gmail_id} is not fetched yet", TRANSIENT)
        try:
            key, rfc_id = identify(item.raw or b"")
        except ParseError as exc:
            record_failure(
                session, claim.account_id, claim.run_id, claim.window_id, item.source_ref, "ingest",
                "permanent", str(exc),
            )
            item.outcome, item.raw = "failed", None
            continue
        identified.append((item, key, rfc_id))
    # The first item of each key goes in one statement; a later item of a key already in this window
    # (a mailbox holding a message twice) goes after it, alone, exactly as it would one by one.
    firsts: dict[str, _Entry] = {}
    repeats: list[_Entry] = []
    for entry in identified:
        if entry[1] in firsts:
            repeats.append(entry)
        else:
            firsts[entry[1]] = entry
    # In key order, not the window's: two windows holding some of the same messages (a mailbox with a
    # message twice, windows of one account in two processes) then take those keys' locks in the same
    # order, and one waits for the other instead of each holding a key the other needs (a deadlock,
    # retried as transient: docs/PERFORMANCE.md, fourteenth round).
    in_key_order = sorted(firsts.values(), key=lambda entry: entry[1])
    stored = _upsert_messages(session, claim.account_id, claim.window_id, in_key_order)
    for item, key, _ in firsts.values():
        message_id, inserted = stored[key]
        item.outcome = "new" if inserted else "duplicate"
        item.message_id, item.raw = message_id, None
    for entry in repeats:
        item, key, _ = entry
        message_id, inserted = _upsert_messages(session, claim.account_id, claim.window_id, [entry])[key]
        item.outcome = "new" if inserted else "duplicate"
        item.message_id, item.raw = message_id, None


_Entry = tuple[WindowItem, str, str | None]  # an item, its message's key and RFC Message-ID

# Items' messages, in one statement that reads each item's bytes and Gmail fields where fetch (or the
# driver, for a mailbox file) left them: only the keys parsed here travel as parameters, three arrays,
# so the statement's text never changes. SQLAlchemy's multi-row VALUES sent every column of every row
# back, and psycopg parsed that statement's ~2,000 placeholders again for each window: a seventh of an
# ingest worker's CPU (py-spy; docs/PERFORMANCE.md, eighteenth round). Rows go in the order of the
# arrays (sorted by key: see _ingest_items).
#
# A copy arriving from the Gmail API for a message first imported from a mailbox file (same Message-ID)
# lends the row its Gmail id and current labels, so later deletions and label changes reach it; a
# mailbox re-import changes nothing.
_UPSERT_FROM_ITEMS = text("""
    INSERT INTO messages (account_id, message_key, rfc_message_id, source_ref, gmail_id, gmail_thread_id,
                          labels, raw, size, content_hash)
    SELECT :account_id, k.message_key, k.rfc_message_id, w.source_ref, w.gmail_id, w.gmail_thread_id,
           w.labels, w.raw, length(w.raw), encode(sha256(w.raw), 'hex')
    FROM unnest(CAST(:positions AS integer[]), CAST(:keys AS text[]), CAST(:rfc_ids AS text[]))
         WITH ORDINALITY AS k(position, message_key, rfc_message_id, ord)
    JOIN window_items w ON w.window_id = :window_id AND w.position = k.position
    ORDER BY k.ord
    ON CONFLICT (account_id, message_key) DO UPDATE
        SET gmail_id = excluded.gmail_id, labels = excluded.labels
        WHERE messages.gmail_id IS NULL AND excluded.gmail_id IS NOT NULL
    RETURNING id, message_key, xmax = 0
""")


def _upsert_messages(session: Session, account_id: int, window_id: int,
                     entries: list[_Entry]) -> dict[str, tuple[int, bool]]:
    """Insert the messages of items of distinct keys of one window, or find those held with their keys:
    (id, inserted) by key. One statement per message was most of the stage's time."""
    if not entries:
        return {}
    rows = session.execute(_UPSERT_FROM_ITEMS, {
        "account_id": account_id, "window_id": window_id,
        "positions": [item.position for item, _, _ in entries],
        "keys": [key for _, key, _ in entries],
        "rfc_ids": [rfc for _, _, rfc in entries],
    })
    stored = {str(key): (int(mid), bool(inserted)) for mid, key, inserted in rows}
    for item, key, _ in entries:
        if key not in stored:  # held already, and this copy lent it nothing
            stored[key] = (_held(session, account_id, key, item), False)
    return stored


def _held(session: Session, account_id: int, key: str, item: WindowItem) -> int:
    """The id of the message already held under `key`, which this item's copy left unchanged."""
    existing, held_as = session.execute(
        select(Message.id, Message.gmail_id).where(Message.account_id == account_id, Message.message_key == key)
    ).one()
    if item.gmail_id is not None and item.gmail_id != held_as:
        # The same message under another Gmail id: remembered, so listings know it and deletions of
        # either id keep the message while Gmail still holds the other.
        alias = pg_insert(GmailAlias).values(account_id=account_id, gmail_id=item.gmail_id,
                                             message_id=existing, labels=item.labels or [])
        session.execute(alias.on_conflict_do_update(
            index_elements=[GmailAlias.account_id, GmailAlias.gmail_id],
            set_={"message_id": alias.excluded.message_id, "labels": alias.excluded.labels}))
    return int(existing)


def _item_totals(session: Session, window_id: int) -> dict[str, int]:

    rows = session.execute(
        select(WindowItem.outcome, func.count())
        .where(WindowItem.window_id == window_id)
        .group_by(WindowItem.outcome)
    ).all()
    totals = {"new": 0, "duplicate": 0, "failed": 0, "gone": 0}
    for outcome, count in rows:
        if outcome in totals:
            totals[outcome] = int(count)
    return totals

__all__ = ["identify", "ingest_window"]
