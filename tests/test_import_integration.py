"""End to end on the real runtime: embedded Postgres, Redis broker, a real Celery worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from pipeline.importing import import_mbox
from pipeline.settings import Settings
from tests.oracle import mbox_facts

pytestmark = pytest.mark.integration


def _import(engine: Engine, path: Path, account: str | None = "me@example.com"):
    from tasks.chains import dispatch_window

    summary = import_mbox(engine, Settings(), path, account, dispatch_window)
    assert summary.status == "done", summary
    return summary


def _scalar(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _contacts_snapshot(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT email, sent_count, received_count, thread_count, first_seen, last_seen, rank_key "
            "FROM contacts ORDER BY email"))]


def test_sample_mailbox_end_to_end(engine: Engine, worker, sample_mbox: Path) -> None:
    facts = mbox_facts(sample_mbox)
    summary = _import(engine, sample_mbox)

    assert summary.entries == facts.entries
    assert summary.new_messages == facts.messages
    assert summary.duplicates == facts.entries - facts.messages - summary.failed
    assert _scalar(engine, "SELECT count(*) FROM messages") == facts.messages
    assert _scalar(engine, "SELECT count(*) FROM messages WHERE normalized_at IS NULL") == 0
    assert summary.contacts > 0 and summary.threads > 0
    assert summary.chunks_embedded > 0
    # Every normalized message is embedded and has an insight for its thread.
    assert _scalar(engine, "SELECT count(*) FROM messages m WHERE NOT EXISTS "
                           "(SELECT 1 FROM embedding_chunks c WHERE c.message_id = m.id)") == 0
    assert _scalar(engine, "SELECT count(*) FROM threads t WHERE message_count > 0 AND NOT EXISTS "
                           "(SELECT 1 FROM insights i WHERE i.thread_id = t.id)") == 0
    assert _scalar(engine, "SELECT count(*) FROM insights WHERE source <> 'rules'") == 0


def test_threads_follow_references_without_gmail_ids(engine: Engine, worker, sample_mbox: Path) -> None:
    _import(engine, sample_mbox)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT rfc_message_id, thread_id, \"references\", in_reply_to FROM messages "
            "WHERE gmail_thread_id IS NULL AND (in_reply_to IS NOT NULL OR cardinality(\"references\") > 0)"
        )).all()
        by_id = dict(conn.execute(text("SELECT rfc_message_id, thread_id FROM messages "
                                       "WHERE rfc_message_id IS NOT NULL")).all())
    assert rows, "the sample must hold replies threaded by headers only"
    for mid, thread_id, refs, reply_to in rows:
        for parent in [reply_to, *(refs or [])]:
            if parent in by_id:
                assert by_id[parent] == thread_id, f"{mid} is not in the thread of {parent}"
    biggest = _scalar(engine, "SELECT max(message_count) FROM threads t WHERE NOT EXISTS "
                              "(SELECT 1 FROM messages m WHERE m.thread_id = t.id AND m.gmail_thread_id IS NOT NULL)")
    assert biggest >= 6


def test_reimport_adds_nothing(engine: Engine, worker, sample_mbox: Path) -> None:
    first = _import(engine, sample_mbox)
    contacts_before = _contacts_snapshot(engine)
    chunks_before = _scalar(engine, "SELECT count(*) FROM embedding_chunks")

    second = _import(engine, sample_mbox)

    assert second.new_messages == 0
    assert second.chunks_embedded == 0
    assert second.duplicates == first.new_messages + first.duplicates
    assert _contacts_snapshot(engine) == contacts_before
    assert _scalar(engine, "SELECT count(*) FROM embedding_chunks") == chunks_before


def test_generated_mailbox_counts_are_exact(engine: Engine, worker, tmp_path: Path) -> None:
    from bench.generate import generate_mbox

    path = tmp_path / "gen.mbox"
    generate_mbox(path, 300, seed=7)
    facts = mbox_facts(path)
    summary = _import(engine, path)
    assert summary.new_messages == facts.messages
    assert _scalar(engine, "SELECT count(*) FROM messages") == facts.messages
    assert_counters_match_rows(engine)


def assert_counters_match_rows(engine: Engine) -> None:
    """Contact counters, built incrementally on the hot path, equal what the rows say."""
    drift = _scalar(engine, """
        SELECT count(*) FROM contacts c LEFT JOIN (
            SELECT contact_id,
                   count(*) FILTER (WHERE direction = 'sent') AS sent,
                   count(*) FILTER (WHERE direction = 'received' AND role = 'from') AS received
            FROM message_participants GROUP BY contact_id) p ON p.contact_id = c.id
        WHERE c.sent_count <> coalesce(p.sent, 0) OR c.received_count <> coalesce(p.received, 0)
           OR c.thread_count <> (SELECT count(*) FROM contact_threads ct WHERE ct.contact_id = c.id)""")
    assert drift == 0
    assert _scalar(engine, "SELECT count(*) FROM threads t WHERE message_count <> "
                           "(SELECT count(*) FROM messages m WHERE m.thread_id = t.id)") == 0
