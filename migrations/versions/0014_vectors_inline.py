"""embedding_chunks: vectors kept in the row (storage MAIN), so an exact scan never reads them from TOAST

pgvector gives `vector` the storage EXTERNAL: a row over PostgreSQL's ~2 kB TOAST threshold has its
largest movable column moved out of line, and a 384-dimension vector (1,544 bytes) is larger than most
chunks' text. At 1M messages 12% of the vectors lay in the TOAST table, and comparing an account's
~9,900 chunks exactly fetched each of those through the TOAST index: 5,900 buffer reads instead of the
2,350 heap pages the rows are on (docs/PERFORMANCE.md, db-scale). With MAIN the text (EXTENDED) is
compressed or moved out first; a vector leaves the row only when the row cannot fit otherwise (a
3,072-dimension vector is 12 kB: PLAIN would refuse such rows).

Rows written before keep their layout until rewritten: on PostgreSQL 17 and later the vectors stored
out of line are found with pg_column_toast_chunk_id and rewritten in place. That is about one row in
eight, and each rewrite adds a row version to every index of the table, HNSW's included: at 1M messages
the 116,421 such rows took 554 s on 2 cores (~48 s per 10k; a 100k mailbox holds ~12k). Older servers
keep them until `mailpipe reembed` or the chunk's next change.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 08:20:00.000000
"""
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE embedding_chunks ALTER COLUMN embedding SET STORAGE MAIN")
    if op.get_bind().dialect.server_version_info >= (17,):
        # A new value (text round trip) is toasted under the new storage; the stored pointer would be kept.
        op.execute("UPDATE embedding_chunks SET embedding = embedding::text::vector "
                   "WHERE pg_column_toast_chunk_id(embedding) IS NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE embedding_chunks ALTER COLUMN embedding SET STORAGE EXTERNAL")
