"""search --from: the sender index covers the account, the date and the message id

`search --from ADDRESS` finds the sender's messages through `ix_messages_from_email`, then compares
their chunks with the query exactly (up to pipeline.search.EXACT_SCAN_MESSAGES of them). The index
held only the address, so each message's row was read for its id and account: one 8 kB page per
message (a message row is ~4 kB of text and raw bytes), ~6,000 pages for a sender of 7,900 messages at
100k (docs/PERFORMANCE.md, search-latency). With those columns included (dates are a filter too), the same lookup is an
index-only scan of a few dozen pages.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 23:40:00.000000
"""
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_messages_from_email', table_name='messages')
    op.create_index('ix_messages_from_email', 'messages', ['from_email'], unique=False,
                    postgresql_include=['account_id', 'sent_at', 'id'])


def downgrade() -> None:
    op.drop_index('ix_messages_from_email', table_name='messages')
    op.create_index('ix_messages_from_email', 'messages', ['from_email'], unique=False)
