"""run progress cache: a finished run's figures kept, with a change log that says when they go stale

`mailpipe status` aggregated the windows and failures of every account's latest runs on each call: at
1M messages over 100 accounts, 171 runs, two grouped scans (~8 ms of a ~25 ms call) and ~170 rows of
progress built in Python (docs/PERFORMANCE.md, db-scale). A finished run's figures rarely change, so
they are kept in `run_progress_cache`, computed once in a REPEATABLE READ snapshot S and stored with S.

When is a cached row still right? Whenever no transaction that changed the run's windows or failures
committed after S. Triggers write that down: every transaction that inserts or deletes a window or a
failure of a run, updates a failure, or updates a window that was finished, adds a row
(run, its transaction id) to `run_changes`, in the same transaction. A reader uses a cached row only when
no change row of the run belongs to a transaction S did not see (`pg_visible_in_snapshot`), checked in the
statement that reads the cached row, so in the reader's own snapshot:

- a change committed before the reader's snapshot has its change row visible to it;
- a cached row is written only when, in S, every window of the run was finished; a window's first update
  after S then starts from a finished version and is logged (an update of an unfinished window is not
  logged: that is the hot path of a running run, and such a run is never cached);
- nobody waits on anybody: a change row is keyed by its transaction, so two writers never touch the same
  row (the way `account_count_deltas` is kept, migration 0012), and a cached row is checked, not
  invalidated, so writing one never races a writer (an older S written over a newer one is only stale
  sooner).

Transaction ids below S's xmin are visible to S, so the check reads only the run's change rows from S's
xmin on (an index range): none, for a run nobody touched since.

`run_changes` has no foreign key: its check would take a KEY SHARE lock on the run's row, and a
transaction that changes a finished window (the enrichment sweep) would then wait on retention deleting
that run, while retention's cascade waits on the window: a deadlock the schema did not have. So a
deleted run's change rows stay behind, and retention (`pipeline.maintenance`, hourly) deletes the rows
of runs that no longer exist; its cascade logs none (deletes are logged only for runs that still exist:
the cascade deletes the windows after the run row is gone). Run ids are never reused.
The cached row goes with its run (ON DELETE CASCADE; written in a transaction of its own that holds
nothing else). TRUNCATE of windows or failures forgets every cached row. A bulk load with triggers off
(`session_replication_role = replica`, bench.db_scale) writes no change rows; it must not run beside
readers that cache (the bench loads before any).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 11:00:00.000000
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

_XACT = "pg_current_xact_id()::text::bigint"
_LOG = f"INSERT INTO run_changes (run_id, xact) VALUES ({{}}, {_XACT}) ON CONFLICT DO NOTHING"

FUNCTIONS = {
    # One row inserted or updated (windows, failures): the run it belongs to, and on an update that moves
    # it, the run it left.
    'run_changes_row': f"""
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.run_id IS NOT NULL THEN
    {_LOG.format('OLD.run_id')};
  END IF;
  IF NEW.run_id IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.run_id IS DISTINCT FROM OLD.run_id) THEN
    {_LOG.format('NEW.run_id')};
  END IF;
  RETURN NULL;
END""",
    # A statement's deletes: once per run that still exists.
    'run_changes_deleted': f"""
BEGIN
  INSERT INTO run_changes (run_id, xact)
  SELECT DISTINCT o.run_id, {_XACT} FROM deleted_rows o JOIN sync_runs r ON r.id = o.run_id
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END""",
    'run_changes_truncate': """
BEGIN
  DELETE FROM run_progress_cache;
  RETURN NULL;
END""",
}

TRIGGERS = {
    'windows_run_change_insert': "AFTER INSERT ON windows FOR EACH ROW EXECUTE FUNCTION run_changes_row()",
    # Updates of a finished window only: a running run's stage marks skip the function entirely.
    'windows_run_change_update': ("AFTER UPDATE ON windows FOR EACH ROW "
                                  "WHEN (OLD.finished OR OLD.run_id IS DISTINCT FROM NEW.run_id) "
                                  "EXECUTE FUNCTION run_changes_row()"),
    'windows_run_change_delete': ("AFTER DELETE ON windows REFERENCING OLD TABLE AS deleted_rows "
                                  "FOR EACH STATEMENT EXECUTE FUNCTION run_changes_deleted()"),
    'windows_run_change_truncate': ("AFTER TRUNCATE ON windows FOR EACH STATEMENT "
                                    "EXECUTE FUNCTION run_changes_truncate()"),
    'failures_run_change_insert': ("AFTER INSERT ON failures FOR EACH ROW WHEN (NEW.run_id IS NOT NULL) "
                                   "EXECUTE FUNCTION run_changes_row()"),
    'failures_run_change_update': "AFTER UPDATE ON failures FOR EACH ROW EXECUTE FUNCTION run_changes_row()",
    'failures_run_change_delete': ("AFTER DELETE ON failures REFERENCING OLD TABLE AS deleted_rows "
                                   "FOR EACH STATEMENT EXECUTE FUNCTION run_changes_deleted()"),
    'failures_run_change_truncate': ("AFTER TRUNCATE ON failures FOR EACH STATEMENT "
                                     "EXECUTE FUNCTION run_changes_truncate()"),
}


def upgrade() -> None:
    op.create_table(
        'run_changes',
        sa.Column('run_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('xact', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint('run_id', 'xact', name=op.f('pk_run_changes')),
    )
    op.create_table(
        'run_progress_cache',
        sa.Column('run_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('snap_xmin', sa.BigInteger(), nullable=False),
        sa.Column('snap', sa.Text(), nullable=False),
        sa.Column('progress', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'],
                                name=op.f('fk_run_progress_cache_run_id_sync_runs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', name=op.f('pk_run_progress_cache')),
    )
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn${body}\n$fn$")
    # No backfill: the cache starts empty, and CREATE TRIGGER's lock holds writers off until commit, so
    # every change committed after this migration is logged.
    for name, spec in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {spec}")


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {name.split('_run_change_')[0]}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table('run_progress_cache')
    op.drop_table('run_changes')
