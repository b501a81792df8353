"""Per-account counts of `mailpipe status` (pipeline.counts, migration 0012) against `count(*)` on the real
Postgres: after imports, deletions of every kind, retention, concurrent writers; compaction; drift repair."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.accounts import remove_account
from pipeline.changes import delete_messages
from pipeline.counts import KINDS, Counts, actual_counts, compact, stored_counts, verify
from pipeline.maintenance import reconcile, retention
from pipeline.reports import status
from pipeline.runs import ensure_account, record_failure
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from tests.web_support import mail, seed_account

pytestmark = pytest.mark.integration


def _sql(engine: Engine, sql: str, **params: object) -> Any:
    with engine.begin() as conn:
        return conn.execute(text(sql), params)


def _stored(engine: Engine) -> Counts:
    """The stored counts of existing accounts, zeros left out (as `actual_counts` leaves them out)."""
    with engine.connect() as conn:
        accounts = set(conn.execute(text("SELECT id FROM accounts")).scalars())
        return {k: n for k, n in stored_counts(conn).items() if n and k[0] in accounts}


def _actual(engine: Engine) -> Counts:
    with engine.connect() as conn:
        return actual_counts(conn)


def assert_exact(engine: Engine) -> Counts:
    actual = _actual(engine)
    assert _stored(engine) == actual
    return actual


def _thread_raws(prefix: str, threads: int, per_thread: int) -> list[bytes]:
    return [mail(f"{prefix}-{t}-{i}", f"{prefix} topic {t}", f"body {t} {i}", day=1 + i,
                 sender=f"Person {t} <p{t}@example.org>", reply_to=f"{prefix}-{t}-{i - 1}" if i else None)
            for t in range(threads) for i in range(per_thread)]


def _add_chunks(engine: Engine, account_id: int, per_message: int = 2) -> None:
    """Chunks for every message of the account (as embed would store them; the vector does not matter)."""
    _sql(engine, "INSERT INTO embedding_chunks (message_id, account_id, chunk_index, content_hash, model, text, "
                 "embedding) SELECT m.id, m.account_id, i, md5(m.id || ':' || i), 'test', 'x', "
                 "array_fill(0.1::real, ARRAY[384])::vector FROM messages m, generate_series(0, :n - 1) i "
                 "WHERE m.account_id = :a ON CONFLICT DO NOTHING", a=account_id, n=per_message)


def _seed(engine: Engine, email: str, threads: int = 3, per_thread: int = 3) -> tuple[int, int]:
    account, run = seed_account(engine, email, _thread_raws(email.split("@")[0], threads, per_thread))
    _add_chunks(engine, account)
    return account, run


def _status_counts(engine: Engine) -> dict[str, dict[str, int]]:
    return {a["email"]: {k: a[k] for k in KINDS} for a in status(engine)}


def test_counts_follow_imports_and_status_shows_count_star(engine: Engine) -> None:
    a, _ = _seed(engine, "ann@example.com", threads=3, per_thread=3)
    b, _ = _seed(engine, "bob@example.com", threads=2, per_thread=4)
    actual = assert_exact(engine)
    assert actual[(a, "messages")] == 9 and actual[(b, "messages")] == 8
    assert actual[(a, "threads")] == 3 and actual[(a, "chunks")] == 18 and actual[(a, "insights")] == 3
    shown = _status_counts(engine)
    assert shown["ann@example.com"] == {k: actual.get((a, k), 0) for k in KINDS}
    assert shown["bob@example.com"] == {k: actual.get((b, k), 0) for k in KINDS}
    ensure_account(engine, "new@example.com", [])  # no count row of any kind yet
    assert _status_counts(engine)["new@example.com"] == dict.fromkeys(KINDS, 0)
    # A re-import of the same mail adds nothing: the duplicates' statements count no row.
    seed_account(engine, "ann@example.com", _thread_raws("ann", 3, 3))
    assert assert_exact(engine) == actual


def test_counts_follow_deletions_of_every_kind(engine: Engine) -> None:
    a, run = _seed(engine, "ann@example.com", threads=3, per_thread=3)
    b, _ = _seed(engine, "bob@example.com", threads=2, per_thread=2)
    with transaction(engine) as s:
        record_failure(s, a, run, None, "offset:x", "normalize", "parse", "broken")
    assert_exact(engine)

    # Gmail deletions: messages with their chunks (cascade), a thread emptied, contacts recounted.
    _sql(engine, "UPDATE messages SET gmail_id = 'g' || id WHERE account_id = :a", a=a)
    gone = _sql(engine, "SELECT gmail_id FROM messages m JOIN threads t ON t.id = m.thread_id "
                        "WHERE m.account_id = :a AND t.thread_key = (SELECT min(thread_key) FROM threads "
                        "WHERE account_id = :a)", a=a).scalars().all()
    assert delete_messages(engine, a, gone, 30.0) == 3
    actual = assert_exact(engine)
    assert actual[(a, "threads")] == 2 and actual[(a, "messages")] == 6

    # Re-embedding's orphan deletion, an insight and a contact going, a failure record going.
    _sql(engine, "DELETE FROM embedding_chunks WHERE account_id = :a AND chunk_index = 1", a=a)
    _sql(engine, "DELETE FROM insights WHERE thread_id = (SELECT min(thread_id) FROM insights WHERE account_id = :a)",
         a=a)
    _sql(engine, "DELETE FROM contacts WHERE id = (SELECT max(id) FROM contacts WHERE account_id = :a)", a=a)
    _sql(engine, "DELETE FROM failures WHERE account_id = :a", a=a)
    assert assert_exact(engine)[(a, "chunks")] == 6

    # A run's failures go with it (retention's cascade); a thread updated to empty and back.
    with transaction(engine) as s:
        record_failure(s, a, run, None, "offset:y", "ingest", "parse", "broken")
    _sql(engine, "DELETE FROM sync_runs WHERE id = :r", r=run)
    _sql(engine, "UPDATE threads SET message_count = 0 WHERE account_id = :a", a=a)
    assert (a, "threads") not in assert_exact(engine)
    _sql(engine, "UPDATE threads SET message_count = 5 WHERE account_id = :a", a=a)
    assert_exact(engine)

    # The whole account: every kind through the cascade; its rows vanish at the next fold.
    remove_account(engine, "ann@example.com")
    assert all(k[0] == b for k in assert_exact(engine))
    compact(engine)
    assert _sql(engine, "SELECT count(*) FROM account_count_deltas WHERE account_id = :a", a=a).scalar() == 0
    assert_exact(engine)

    # TRUNCATE forgets that kind (bench.embed_throughput empties the chunks so).
    _sql(engine, "TRUNCATE embedding_chunks")
    assert (b, "chunks") not in assert_exact(engine)


def test_retention_keeps_counts_exact_and_folds_deltas(engine: Engine) -> None:
    a, run = _seed(engine, "ann@example.com")
    _seed(engine, "ann@example.com", threads=1, per_thread=2)  # a second run: the first is not the latest
    with transaction(engine) as s:
        record_failure(s, a, run, None, "offset:z", "normalize", "parse", "broken")
    _sql(engine, "UPDATE sync_runs SET finished_at = now() - interval '90 days' WHERE id = :r", r=run)
    report = retention(engine, Settings())
    assert report.runs_deleted == 1 and report.failures_deleted == 1
    # The failures' rows at least: +1 for the record, -1 for its cascade, in two transactions.
    assert report.count_deltas_folded >= 2
    assert _sql(engine, "SELECT count(*) FROM account_count_deltas GROUP BY account_id, kind "
                        "HAVING count(*) > 1").all() == []
    assert (a, "failures") not in assert_exact(engine)
    assert retention(engine, Settings()).count_deltas_folded == 0


def test_compaction_keeps_sums_and_leaves_open_transactions_alone(engine: Engine) -> None:
    a, run = _seed(engine, "ann@example.com")
    for ref in ("x", "y", "z"):  # three transactions: three delta rows of (ann, failures)
        with transaction(engine) as s:
            record_failure(s, a, run, None, f"offset:{ref}", "normalize", "parse", "broken")
    before = assert_exact(engine)
    with engine.connect() as open_tx:
        open_tx.begin()
        # A writer still in progress: its delta row is not visible to the fold and must survive it.
        open_tx.execute(text("INSERT INTO failures (account_id, item_ref, stage, error_class, reason) "
                             "VALUES (:a, 'w', 'ingest', 'x', 'y')"), {"a": a})
        folded = compact(engine)
        assert folded.folded >= 3 and folded.written >= 1
        assert assert_exact(engine) == before
        open_tx.commit()
    after = assert_exact(engine)
    assert after[(a, "failures")] == before[(a, "failures")] + 1
    assert compact(engine).folded == 2  # the fold's row and the writer's, for failures
    assert compact(engine).folded == 0
    assert assert_exact(engine) == after


def test_concurrent_writers_neither_wait_nor_lose_counts(engine: Engine) -> None:
    a, _ = _seed(engine, "ann@example.com", threads=1, per_thread=1)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with engine.connect() as conn:
                for i in range(20):
                    # A writer blocked on another's counter row would fail here instead of waiting.
                    conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                    for j in range(5):
                        conn.execute(text(
                            "INSERT INTO messages (account_id, message_key, source_ref, raw, size, content_hash) "
                            "VALUES (:a, :k, 'x', '\\x00', 1, 'h')"), {"a": a, "k": f"w{n}-{i}-{j}"})
                    if i % 4 == 3:
                        conn.rollback()  # a failed window: its rows and its deltas both vanish
                    else:
                        conn.commit()
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    # Folds while they write: sums stay right.
    while any(t.is_alive() for t in threads):
        compact(engine)
    for t in threads:
        t.join()
    assert errors == []
    assert assert_exact(engine)[(a, "messages")] == 1 + 6 * 15 * 5


def test_held_counter_transaction_does_not_block_another_writer(engine: Engine) -> None:
    a, _ = _seed(engine, "ann@example.com", threads=1, per_thread=1)
    insert = text("INSERT INTO failures (account_id, item_ref, stage, error_class, reason) "
                  "VALUES (:a, :r, 'ingest', 'x', 'y')")
    with engine.connect() as first:
        first.begin()
        first.execute(insert, {"a": a, "r": "first"})  # holds its delta row of (ann, failures)
        with engine.begin() as second:
            second.execute(text("SET LOCAL lock_timeout = '1s'"))
            second.execute(insert, {"a": a, "r": "second"})  # no wait on the first's row
        first.commit()
    assert assert_exact(engine)[(a, "failures")] == 2


def test_reconcile_fixes_a_planted_drift_and_reports_it(engine: Engine) -> None:
    a, _ = _seed(engine, "ann@example.com")
    truth = assert_exact(engine)
    assert reconcile(engine, Settings()).counts == []
    # Rows written with the trigger off (as a bulk load with triggers disabled would), and a bogus delta.
    _sql(engine, "ALTER TABLE insights DISABLE TRIGGER insights_count_delete")
    try:
        _sql(engine, "DELETE FROM insights WHERE thread_id = (SELECT min(thread_id) FROM insights)")
    finally:
        _sql(engine, "ALTER TABLE insights ENABLE TRIGGER insights_count_delete")
    _sql(engine, "INSERT INTO account_count_deltas VALUES (:a, 'messages', 1, 7)", a=a)
    assert _status_counts(engine)["ann@example.com"]["messages"] == truth[(a, "messages")] + 7

    report = reconcile(engine, Settings())

    assert report.counts == [
        {"account_id": a, "kind": "insights", "stored": truth[(a, "insights")], "actual": truth[(a, "insights")] - 1},
        {"account_id": a, "kind": "messages", "stored": truth[(a, "messages")] + 7, "actual": truth[(a, "messages")]},
    ]
    fixed = assert_exact(engine)
    assert _status_counts(engine)["ann@example.com"] == {k: fixed.get((a, k), 0) for k in KINDS}
    assert _sql(engine, "SELECT count(*) FROM account_count_deltas GROUP BY account_id, kind "
                        "HAVING count(*) > 1").all() == []  # folded too
    assert reconcile(engine, Settings()).counts == []
    assert verify(engine) == []


def test_migration_backfills_counts_of_existing_rows(engine: Engine, pg_url: str) -> None:
    from alembic import command

    from pipeline.storage.db import alembic_config

    a, _ = _seed(engine, "ann@example.com")
    truth = assert_exact(engine)
    config = alembic_config(pg_url)
    command.downgrade(config, "0011")
    try:
        _sql(engine, "INSERT INTO failures (account_id, item_ref, stage, error_class, reason) "
                     "VALUES (:a, 'w', 'ingest', 'x', 'y')", a=a)  # written while no trigger counted
    finally:
        command.upgrade(config, "head")
    truth[(a, "failures")] = truth.get((a, "failures"), 0) + 1
    assert assert_exact(engine) == truth
