"""hot query indexes (db-scale bench): chunks by account, an account's threads newest first and its live threads

Found by `python -m bench.db_scale` (1M messages over 100 accounts, docs/PERFORMANCE.md):

- `ix_embedding_chunks_account_id`: `mailpipe status` counted each account's chunks by reading the
  whole table (a sequential scan of every chunk's vector, once per account); and an account's search,
  with one account holding 1% of the chunks, could only walk the HNSW graph through ~100 other
  accounts' chunks for each of its own. With this index the count is an index-only scan, and the
  planner compares the HNSW walk with an exact scan of the account's own chunks and takes the cheaper.
- `ix_threads_account_id_recent`: `mailpipe insights` (latest threads with an insight) read every
  insight of the account and looked up or hashed every thread to sort them; this index walks the
  account's threads newest first in the list's own order and stops at the limit.
- `ix_threads_account_id_live`: `mailpipe status` counts an account's threads that still hold a message;
  `message_count > 0` was checked on every thread's row (93% of the buffers status read at 1M); this
  partial index answers the count from the index alone.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 21:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_embedding_chunks_account_id', 'embedding_chunks', ['account_id'], unique=False)
    op.create_index('ix_threads_account_id_recent', 'threads',
                    ['account_id', sa.text('last_at DESC NULLS LAST'), sa.text('id DESC')], unique=False)
    op.create_index('ix_threads_account_id_live', 'threads', ['account_id'], unique=False,
                    postgresql_where=sa.text('message_count > 0'))


def downgrade() -> None:
    op.drop_index('ix_threads_account_id_live', table_name='threads', postgresql_where=sa.text('message_count > 0'))
    op.drop_index('ix_threads_account_id_recent', table_name='threads')
    op.drop_index('ix_embedding_chunks_account_id', table_name='embedding_chunks')
