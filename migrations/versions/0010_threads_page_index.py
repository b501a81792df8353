"""threads page index: the web API's threads list, newest first, as an index range

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 21:10:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_threads_account_page', 'threads',
                    ['account_id', sa.text("coalesce(last_at, '-infinity'::timestamptz) DESC"), sa.text('id DESC')],
                    unique=False, postgresql_where=sa.text('message_count > 0'))


def downgrade() -> None:
    op.drop_index('ix_threads_account_page', table_name='threads', postgresql_where=sa.text('message_count > 0'))
