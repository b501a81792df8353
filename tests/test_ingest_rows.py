"""What ingest stores for each window item: the message row from the item's bytes and fields, whatever
the source, and what a copy of a message already held changes of it."""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from pipeline.records import RawMessage
from pipeline.runs import StageClaim, add_window, begin_run
from pipeline.stages.ingest import ingest_window


def _raw(key: str, body: str = "body") -> bytes:
    return f"Message-ID: <{key}@example.com>\r\nSubject: {key}\r\n\r\n{body} {key}\r\n".encode()


def _account(engine: Engine) -> tuple[int, int]:
    with engine.begin() as conn:
        account_id = conn.execute(text("INSERT INTO accounts (email) VALUES ('me@example.com') RETURNING id")
                                  ).scalar_one()
    return account_id, begin_run(engine, account_id, "full", "gmail", stale_seconds=600)


def _ingest(engine: Engine, window_id: int, run_id: int, account_id: int) -> dict[str, int]:
    with Session(engine) as s, s.begin():
        return ingest_window(s, StageClaim(window_id, run_id, account_id, attempts=1, upstream_state=None))


def _rows(engine: Engine, sql: str, **params: object) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def test_each_item_becomes_a_message_with_its_bytes_and_fields(engine: Engine) -> None:
    account_id, run_id = _account(engine)
    items = [RawMessage("gmail:a1", _raw("a"), gmail_thread_id="t1", labels=("INBOX", "UNREAD"), gmail_id="a1"),
             RawMessage("offset:0", _raw("b", "x" * 5000)),  # no Gmail fields, a body past one page
             RawMessage("gmail:c1", _raw("c"), gmail_thread_id="t2", labels=(), gmail_id="c1")]
    window_id = add_window(engine, run_id, 1, items)

    assert _ingest(engine, window_id, run_id, account_id) == {"new_messages": 3, "duplicates": 0, "failed": 0}

    stored = _rows(engine, "SELECT source_ref, gmail_id, gmail_thread_id, labels, raw, size, content_hash, "
                           "rfc_message_id, account_id FROM messages ORDER BY source_ref")
    rfc_ids = ["a@example.com", "b@example.com", "c@example.com"]
    expected = [(m.source_ref, m.gmail_id, m.gmail_thread_id, list(m.labels), m.raw, len(m.raw or b""),
                 hashlib.sha256(m.raw or b"").hexdigest(), rfc_id, account_id)
                for m, rfc_id in zip(items, rfc_ids, strict=True)]
    assert stored == sorted(expected, key=lambda r: str(r[0]))
    # Each item now names its message and no longer holds the bytes.
    assert _rows(engine, "SELECT i.raw IS NULL, i.outcome, m.source_ref = i.source_ref FROM window_items i "
                         "JOIN messages m ON m.id = i.message_id WHERE i.window_id = :w", w=window_id) == [
        (True, "new", True)] * 3


def test_a_gmail_copy_lends_a_mailbox_import_its_id_and_labels_and_changes_nothing_else(engine: Engine) -> None:
    account_id, run_id = _account(engine)
    imported = add_window(engine, run_id, 1, [RawMessage("offset:0", _raw("a"), labels=("Takeout",)),
                                              RawMessage("offset:9", _raw("b"), gmail_thread_id="t0")])
    _ingest(engine, imported, run_id, account_id)
    before = _rows(engine, "SELECT id, source_ref, raw, content_hash FROM messages ORDER BY id")

    # The same two messages from the API (another copy of b's bytes: a Gmail copy differs in its headers),
    # and a third, new one.
    fetched = add_window(engine, run_id, 2, [
        RawMessage("gmail:b1", _raw("b", "other copy"), gmail_thread_id="t9", labels=("INBOX",), gmail_id="b1"),
        RawMessage("gmail:a1", _raw("a"), gmail_thread_id="t8", labels=("SENT",), gmail_id="a1"),
        RawMessage("gmail:d1", _raw("d"), gmail_thread_id="t7", labels=("INBOX",), gmail_id="d1")])
    assert _ingest(engine, fetched, run_id, account_id) == {"new_messages": 1, "duplicates": 2, "failed": 0}

    assert _rows(engine, "SELECT id, source_ref, raw, content_hash FROM messages WHERE gmail_id IN ('a1', 'b1') "
                         "ORDER BY id") == before
    assert _rows(engine, "SELECT rfc_message_id, gmail_id, labels FROM messages ORDER BY rfc_message_id") == [
        ("a@example.com", "a1", ["SENT"]), ("b@example.com", "b1", ["INBOX"]), ("d@example.com", "d1", ["INBOX"])]

    # A later copy under another Gmail id keeps the first id and is remembered as an alias.
    again = add_window(engine, run_id, 3, [RawMessage("gmail:a2", _raw("a"), labels=("STARRED",), gmail_id="a2")])
    assert _ingest(engine, again, run_id, account_id) == {"new_messages": 0, "duplicates": 1, "failed": 0}
    assert _rows(engine, "SELECT gmail_id, labels FROM messages WHERE rfc_message_id = 'a@example.com'") == [
        ("a1", ["SENT"])]
    assert _rows(engine, "SELECT gmail_id, labels FROM gmail_aliases") == [("a2", ["STARRED"])]


def test_a_message_twice_in_one_window_is_stored_once(engine: Engine) -> None:
    account_id, run_id = _account(engine)
    window_id = add_window(engine, run_id, 1, [RawMessage("offset:0", _raw("a")), RawMessage("offset:5", _raw("b")),
                                               RawMessage("offset:9", _raw("a"))])
    assert _ingest(engine, window_id, run_id, account_id) == {"new_messages": 2, "duplicates": 1, "failed": 0}
    assert _rows(engine, "SELECT source_ref FROM messages ORDER BY source_ref") == [("offset:0",), ("offset:5",)]
    assert _rows(engine, "SELECT count(DISTINCT message_id), count(*) FROM window_items WHERE window_id = :w",
                 w=window_id) == [(2, 3)]


def test_an_unreadable_item_is_failed_with_its_reason_and_its_bytes_dropped(engine: Engine) -> None:
    account_id, run_id = _account(engine)
    window_id = add_window(engine, run_id, 1, [RawMessage("offset:0", b"  \r\n"), RawMessage("offset:4", _raw("a"))])
    assert _ingest(engine, window_id, run_id, account_id) == {"new_messages": 1, "duplicates": 0, "failed": 1}
    assert _rows(engine, "SELECT position, outcome, raw IS NULL, message_id IS NULL FROM window_items "
                         "WHERE window_id = :w ORDER BY position", w=window_id) == [
        (0, "failed", True, True), (1, "new", True, False)]
    assert _rows(engine, "SELECT item_ref, stage, error_class, reason FROM failures") == [
        ("offset:0", "ingest", "permanent", "empty message")]
