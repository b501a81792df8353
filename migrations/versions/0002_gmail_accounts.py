"""gmail accounts, cursors, quota buckets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:51:30.343054
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('quota_buckets',
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('tokens', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('paused_until', sa.Float(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_quota_buckets'))
    )
    op.add_column('accounts', sa.Column('status_reason', sa.Text(), nullable=True))
    op.add_column('accounts', sa.Column('gmail_credentials', sa.LargeBinary(), nullable=True))
    op.add_column('accounts', sa.Column('history_id', sa.BigInteger(), nullable=True))
    op.add_column('accounts', sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('accounts', sa.Column('watch_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('accounts', sa.Column('sync_requested_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('messages', sa.Column('gmail_id', sa.String(length=32), nullable=True))
    op.create_index('uq_messages_account_id_gmail_id', 'messages', ['account_id', 'gmail_id'], unique=True, postgresql_where=sa.text('gmail_id IS NOT NULL'))
    op.add_column('sync_runs', sa.Column('history_id', sa.BigInteger(), nullable=True))
    op.add_column('window_items', sa.Column('gmail_id', sa.String(length=32), nullable=True))
    op.add_column('windows', sa.Column('quota_units', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('windows', 'quota_units')
    op.drop_column('window_items', 'gmail_id')
    op.drop_column('sync_runs', 'history_id')
    op.drop_index('uq_messages_account_id_gmail_id', table_name='messages', postgresql_where=sa.text('gmail_id IS NOT NULL'))
    op.drop_column('messages', 'gmail_id')
    op.drop_column('accounts', 'sync_requested_at')
    op.drop_column('accounts', 'watch_expires_at')
    op.drop_column('accounts', 'last_synced_at')
    op.drop_column('accounts', 'history_id')
    op.drop_column('accounts', 'gmail_credentials')
    op.drop_column('accounts', 'status_reason')
    op.drop_table('quota_buckets')
