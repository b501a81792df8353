"""Mailbox changes that need no fetch: messages deleted in Gmail, labels added or removed.

Deleting a message takes its participants, chunks and thread membership with it; the contacts and
threads it touched are recounted from the rows that remain, so no counter drifts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session

from pipeline.contacts import combine_log, rank_key, rank_log_increment, traffic_of
from pipeline.records import Participant
from pipeline.stages.normalize import refresh_threads
from pipeline.storage.db import transaction
from pipeline.storage.models import Contact, GmailAlias, Message, MessageParticipant


def delete_messages(engine: Engine, account_id: int, gmail_ids: Iterable[str], half_life_days: float) -> int:
    """Delete the account's messages with these Gmail ids; returns how many were deleted.

    A message Gmail also holds under another id (an alias) is not deleted: that id becomes its own.
    """
    ids = sorted(set(gmail_ids))
    if not ids:
        return 0
    with transaction(engine) as s:
        s.execute(delete(GmailAlias).where(GmailAlias.account_id == account_id, GmailAlias.gmail_id.in_(ids)))
        rows = s.execute(
            select(Message.id, Message.thread_id).where(Message.account_id == account_id, Message.gmail_id.in_(ids))
        ).all()
        kept = _hand_to_aliases(s, [int(r[0]) for r in rows])
        rows = [r for r in rows if int(r[0]) not in kept]
        if not rows:
            return 0
        message_ids = [int(r[0]) for r in rows]
        threads = sorted({int(r[1]) for r in rows if r[1] is not None})
        contacts = sorted(set(s.execute(
            select(MessageParticipant.contact_id).where(MessageParticipant.message_id.in_(message_ids))
        ).scalars()))
        s.execute(delete(Message).where(Message.id.in_(message_ids)))
        refresh_threads(s, threads)
        s.execute(text("UPDATE threads SET message_count = 0 WHERE id = ANY(:ids) "
                       "AND NOT EXISTS (SELECT 1 FROM messages WHERE thread_id = threads.id)"), {"ids": threads})
        recount_contacts(s, contacts, half_life_days)
    return len(message_ids)


def _hand_to_aliases(session: Session, message_ids: list[int]) -> set[int]:
    """Messages whose Gmail id is gone but that Gmail holds under an alias: the alias becomes their id
    (and its labels theirs). Returns the messages kept so."""
    kept: set[int] = set()
    for message_id in message_ids:
        alias = session.execute(
            select(GmailAlias).where(GmailAlias.message_id == message_id).order_by(GmailAlias.gmail_id).limit(1)
        ).scalar_one_or_none()
        if alias is None:
            continue
        session.execute(update(Message).where(Message.id == message_id)
                        .values(gmail_id=alias.gmail_id, labels=sorted(alias.labels)))
        session.delete(alias)
        kept.add(message_id)
    return kept


_RELABEL = ("SET labels = ARRAY(SELECT DISTINCT l FROM unnest(labels || CAST(:plus AS text[])) AS l "
            "WHERE l <> ALL(CAST(:minus AS text[])) ORDER BY l) WHERE account_id = :account AND gmail_id = :gid")


def relabel_messages(engine: Engine, account_id: int, added: Mapping[str, set[str]],
                     removed: Mapping[str, set[str]]) -> int:
    """Apply netted label changes to the messages we hold (and to their aliases' own labels);
    returns how many messages changed."""
    changed = 0
    with transaction(engine) as s:
        for gmail_id in sorted(set(added) | set(removed)):
            params = {"plus": sorted(added.get(gmail_id, set())), "minus": sorted(removed.get(gmail_id, set())),
                      "account": account_id, "gid": gmail_id}
            result = s.execute(text(f"UPDATE messages {_RELABEL}"), params)
            changed += int(result.rowcount)  # type: ignore[attr-defined]
            s.execute(text(f"UPDATE gmail_aliases {_RELABEL}"), params)
    return changed


def recount_contacts(session: Session, contact_ids: list[int], half_life_days: float) -> None:
    """Recompute counts, dates, threads and rank of these contacts from their participant rows."""
    for contact_id in contact_ids:
        rows = session.execute(
            select(MessageParticipant.role, MessageParticipant.direction, Message.sent_at, Message.thread_id)
            .join(Message, Message.id == MessageParticipant.message_id)
            .where(MessageParticipant.contact_id == contact_id)
        ).all()
        sent = received = 0
        score: float | None = None
        for role, direction, when, _ in rows:
            traffic = traffic_of(Participant(email="", name="", role=role, direction=direction))
            sent += traffic == "sent"
            received += traffic == "received"
            if traffic is not None and when is not None:
                score = combine_log(score, rank_log_increment(traffic, when, half_life_days))
        dates = [r[2] for r in rows if r[2] is not None]
        session.execute(
            text("DELETE FROM contact_threads ct WHERE ct.contact_id = :id AND NOT EXISTS ("
                 "SELECT 1 FROM message_participants mp JOIN messages m ON m.id = mp.message_id "
                 "WHERE mp.contact_id = :id AND m.thread_id = ct.thread_id)"),
            {"id": contact_id},
        )
        threads = len({r[3] for r in rows if r[3] is not None})
        contact = session.get_one(Contact, contact_id)
        contact.sent_count, contact.received_count, contact.thread_count = sent, received, threads
        contact.first_seen = min(dates) if dates else None
        contact.last_seen = max(dates) if dates else None
        contact.rank_log = score
        contact.rank_key = rank_key(score, sent > 0 and received > 0)


__all__ = ["delete_messages", "recount_contacts", "relabel_messages"]
