"""account count deltas: per-account counts of messages, live threads, contacts, chunks, insights, failures

`mailpipe status` counted each account's rows with `count(*)` (2.7M index entries at 1M messages,
p95 163 ms; docs/PERFORMANCE.md, db-scale). The counts now live in `account_count_deltas`, written by
triggers in the same transaction as the rows they count, so they cannot drift from them whoever
writes (the stages, retention's cascades, account deletion, re-embedding, Gmail deletions, a bulk load):

- One row per (account, kind, transaction): a transaction adds to its own row (keyed by its xid), so
  concurrent workers never wait on one another's counter row, and a window's 200 single-message
  inserts make one row, not 200. `status` sums the rows of each account and kind.
- `pipeline.counts.compact` (retention, hourly, and reconciliation) folds committed rows into one row
  per account and kind; `pipeline.counts.verify` (reconciliation, daily) compares the sums with
  `count(*)` in one snapshot and writes a correcting row for any drift (and reports it).
- Deletes, thread updates and bulk inserts are counted by statement-level triggers with transition
  tables: one upsert per statement however many rows it touched (an embed batch of 500 chunks, an
  account's cascade). Tables whose writers insert one row per statement (messages, insights,
  failures) are counted per row instead, which is cheaper there (see INSERTS_PER_ROW). New threads
  are inserted with no message yet, so the insert trigger of threads is per row with a WHEN clause:
  the server skips it without calling a function for every new thread.
- TRUNCATE of a counted table forgets that kind's rows (a bench empties `embedding_chunks` that way).
- No foreign key to accounts: deleting an account cascades to its rows, whose delete triggers then
  write rows for an account already gone; `compact` drops the rows of accounts that no longer exist
  (their sums are zero by then) and `status` reads only existing accounts.

The backfill counts existing rows once, after the triggers exist (their creation locks the tables
against writes until this migration commits, so no write is missed or counted twice).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 23:30:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

# kind -> (table, the rows it counts). Kept in step with pipeline.counts.COUNTED.
COUNTED = {
    'messages': ('messages', 'true'),
    'threads': ('threads', 'message_count > 0'),
    'contacts': ('contacts', 'true'),
    'chunks': ('embedding_chunks', 'true'),
    'insights': ('insights', 'true'),
    'failures': ('failures', 'true'),
}

_XACT = "pg_current_xact_id()::text::bigint"
_UPSERT = "ON CONFLICT (account_id, kind, xact) DO UPDATE SET delta = d.delta + excluded.delta"

# How each table's inserts are counted. Per row where the writers insert one row per statement (ingest a
# message, record a failure, upsert a thread's insight): a row trigger fires only for rows actually
# inserted (not for a duplicate's ON CONFLICT) and its upsert costs ~36 us against ~71 us for a statement
# trigger's aggregate over its transition table (EXPLAIN ANALYZE, per ingest upsert). Per statement where
# they insert many rows at once (a window's contacts, embed's batches of 500 chunks). Deletes are always
# counted per statement: they come in bulk (an account's cascade, retention, Gmail deletions, re-embedding).
INSERTS_PER_ROW = {'messages', 'insights', 'failures'}

FUNCTIONS = {
    # One inserted row: TG_ARGV[0] the kind.
    'account_counts_row': f"""
BEGIN
  INSERT INTO account_count_deltas AS d (account_id, kind, xact, delta)
  VALUES (NEW.account_id, TG_ARGV[0], {_XACT}, 1)
  {_UPSERT};
  RETURN NULL;
END""",
    # A statement's inserts or deletes: TG_ARGV[0] the kind; the rows in the transition table `counted_rows`.
    'account_counts_rows': f"""
BEGIN
  INSERT INTO account_count_deltas AS d (account_id, kind, xact, delta)
  SELECT account_id, TG_ARGV[0], {_XACT}, CASE WHEN TG_OP = 'DELETE' THEN -count(*) ELSE count(*) END
  FROM counted_rows GROUP BY account_id
  {_UPSERT};
  RETURN NULL;
END""",
    # The same for threads, which count only while they hold mail.
    'account_counts_live_threads': f"""
BEGIN
  INSERT INTO account_count_deltas AS d (account_id, kind, xact, delta)
  SELECT account_id, 'threads', {_XACT}, CASE WHEN TG_OP = 'DELETE' THEN -count(*) ELSE count(*) END
  FROM counted_rows WHERE message_count > 0 GROUP BY account_id
  {_UPSERT};
  RETURN NULL;
END""",
    # A statement updating threads (normalize's refresh of a window's threads): those that gained their
    # first message minus those that lost their last.
    'account_counts_thread_updates': f"""
BEGIN
  INSERT INTO account_count_deltas AS d (account_id, kind, xact, delta)
  SELECT account_id, 'threads', {_XACT}, sum(n) FROM (
    SELECT account_id, 1 AS n FROM new_rows WHERE message_count > 0
    UNION ALL SELECT account_id, -1 FROM old_rows WHERE message_count > 0) c
  GROUP BY account_id HAVING sum(n) <> 0
  {_UPSERT};
  RETURN NULL;
END""",
    'account_counts_truncate': """
BEGIN
  DELETE FROM account_count_deltas WHERE kind = TG_ARGV[0];
  RETURN NULL;
END""",
}


def _triggers() -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER statement) of every counting trigger."""
    out = []
    for kind, (table, _) in COUNTED.items():
        rows_fn = 'account_counts_live_threads' if kind == 'threads' else 'account_counts_rows'
        if kind == 'threads':
            # Normalize inserts a thread before its messages point at it (message_count 0): the WHEN
            # clause skips the trigger for those without calling a function.
            insert = ("AFTER INSERT ON threads FOR EACH ROW WHEN (NEW.message_count > 0) "
                      "EXECUTE FUNCTION account_counts_row('threads')")
        elif kind in INSERTS_PER_ROW:
            insert = f"AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION account_counts_row('{kind}')"
        else:
            insert = (f"AFTER INSERT ON {table} REFERENCING NEW TABLE AS counted_rows FOR EACH STATEMENT "
                      f"EXECUTE FUNCTION {rows_fn}('{kind}')")
        out.append((f'{table}_count_insert', f"CREATE TRIGGER {table}_count_insert {insert}"))
        out.append((f'{table}_count_delete',
                    f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} "
                    f"REFERENCING OLD TABLE AS counted_rows FOR EACH STATEMENT "
                    f"EXECUTE FUNCTION {rows_fn}('{kind}')"))
        out.append((f'{table}_count_truncate',
                    f"CREATE TRIGGER {table}_count_truncate AFTER TRUNCATE ON {table} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION account_counts_truncate('{kind}')"))
    out.append(('threads_count_update',
                "CREATE TRIGGER threads_count_update AFTER UPDATE ON threads "
                "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
                "EXECUTE FUNCTION account_counts_thread_updates()"))
    return out


def upgrade() -> None:
    op.create_table(
        'account_count_deltas',
        sa.Column('account_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('xact', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('delta', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('account_id', 'kind', 'xact', name=op.f('pk_account_count_deltas')),
    )
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn${body}\n$fn$")
    for _, create in _triggers():
        op.execute(create)
    # Backfill: after CREATE TRIGGER, whose lock holds writers off until commit.
    counts = " UNION ALL ".join(
        f"SELECT account_id, '{kind}', {_XACT}, count(*) FROM {table} WHERE {where} GROUP BY account_id"
        for kind, (table, where) in COUNTED.items()
    )
    op.execute(f"INSERT INTO account_count_deltas (account_id, kind, xact, delta) {counts}")


def downgrade() -> None:
    for name, _ in _triggers():
        table = name.rsplit('_count_', 1)[0]
        op.execute(f"DROP TRIGGER {name} ON {table}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table('account_count_deltas')
