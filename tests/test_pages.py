"""Keyset pages on a real PostgreSQL: every row once, in order, across ties and undated rows, and the
plans they run (an index range from the cursor, not a scan of the rows before it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from pipeline.errors import NotFoundError
from pipeline.pages import contacts_page, thread_page, threads_page
from pipeline.runs import ensure_account

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _all_pages(fetch: object, limit: int) -> list[int]:
    seen: list[int] = []
    cursor = None
    while True:
        page = fetch(limit, cursor)  # type: ignore[operator]
        seen += [item["id"] for item in page.items]
        assert page.has_more == (page.next_cursor is not None)
        if not page.has_more:
            return seen
        cursor = page.next_cursor


def test_threads_pages_go_newest_first_then_undated_each_thread_once(engine: Engine) -> None:
    account = ensure_account(engine, "pages@example.com", [])
    # Dated threads (two sharing a date), undated ones, and an empty thread that is never listed.
    lasts = [T0 + timedelta(days=d) for d in (5, 3, 3, 9, 1)] + [None, None]
    with engine.begin() as conn:
        ids = [int(conn.execute(text(
            "INSERT INTO threads (account_id, thread_key, message_count, last_at) VALUES (:a, :k, 1, :l) RETURNING id"),
            {"a": account, "k": f"t{i}", "l": last}).scalar_one()) for i, last in enumerate(lasts)]
        conn.execute(text("INSERT INTO threads (account_id, thread_key, message_count) VALUES (:a, 'empty', 0)"),
                     {"a": account})
    expected = [tid for _, tid in sorted(
        zip(lasts, ids, strict=True),
        key=lambda p: (p[0] is not None, p[0] or T0, p[1]), reverse=True)]
    for limit in (1, 2, 3, 50):
        assert _all_pages(lambda n, c: threads_page(engine, account, n, c), limit) == expected, limit


def test_contacts_pages_follow_the_rank_with_ties_by_id(engine: Engine) -> None:
    account = ensure_account(engine, "ranks@example.com", [])
    ranks = [3.0, 1.0, 3.0, 2.0, 3.0, 0.5]
    with engine.begin() as conn:
        ids = [int(conn.execute(text(
            "INSERT INTO contacts (account_id, email, rank_key) VALUES (:a, :e, :r) RETURNING id"),
            {"a": account, "e": f"c{i}@example.org", "r": r}).scalar_one()) for i, r in enumerate(ranks)]
    expected = [cid for _, cid in sorted(zip(ranks, ids, strict=True), key=lambda p: (-p[0], p[1]))]
    for limit in (1, 2, 4):
        assert _all_pages(lambda n, c: contacts_page(engine, account, n, c, 90.0), limit) == expected, limit


def test_a_threads_page_after_a_cursor_is_an_index_range(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # the table is small; ask whether the index can serve
        plan = "\n".join(r[0] for r in conn.execute(text(
            "EXPLAIN SELECT id FROM threads WHERE account_id = 1 AND message_count > 0 AND "
            "(coalesce(last_at, '-infinity'::timestamptz), id) < (now(), 10) "
            "ORDER BY coalesce(last_at, '-infinity'::timestamptz) DESC, id DESC LIMIT 51")))
    assert "ix_threads_account_page" in plan and "Sort" not in plan, plan


def test_a_contact_rows_dict_has_every_field() -> None:
    """ContactRow.as_dict is written out by hand (asdict was most of a page's time): it must not miss one."""
    from dataclasses import asdict

    from pipeline.reports import ContactRow

    row = ContactRow(email="a@b.c", name="A", company=None, sent=1, received=2, threads=3,
                     first_seen="2024-01-01T00:00:00+00:00", last_seen=None, rank=0.5)
    assert row.as_dict() == asdict(row)


def test_pages_show_a_threads_insight_and_none_without_one(engine: Engine) -> None:
    """The threads list reads columns (not Thread/Insight objects) and a thread page reads the thread
    and its insight in one statement: both must still show the insight's fields, and None without one."""
    account = ensure_account(engine, "insight@example.com", [])
    with engine.begin() as conn:
        with_insight, without = (int(conn.execute(text(
            "INSERT INTO threads (account_id, thread_key, subject, message_count, last_at) "
            "VALUES (:a, :k, :k, 1, :l) RETURNING id"), {"a": account, "k": k, "l": T0 + timedelta(days=d)}
        ).scalar_one()) for k, d in (("with", 2), ("without", 1)))
        conn.execute(text(
            "INSERT INTO insights (thread_id, account_id, category, needs_reply, summary, source) "
            "VALUES (:t, :a, 'finance', 'to_reply', 'Pay the invoice.', 'rules')"), {"t": with_insight, "a": account})
    items = threads_page(engine, account, 10, None).items
    assert [(i["id"], i["subject"], i["category"], i["needs_reply"]) for i in items] == [
        (with_insight, "with", "finance", "to_reply"), (without, "without", None, None)]
    shown = thread_page(engine, account, with_insight, 10, None).extra
    assert shown["subject"] == "with" and shown["insight"]["summary"] == "Pay the invoice."
    assert thread_page(engine, account, without, 10, None).extra["insight"] is None
    other = ensure_account(engine, "other@example.com", [])
    with pytest.raises(NotFoundError):
        thread_page(engine, other, with_insight, 10, None)
