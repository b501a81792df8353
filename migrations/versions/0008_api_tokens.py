"""web API: bearer tokens per account, seen webhook signatures, queued sync runs

A trigger now records its sync as a `sync_runs` row with status 'queued' (at most one per account), which
the sync task adopts when it starts; `accounts.sync_requested_at`, the flag that played that part
before, goes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.LargeBinary(), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('name', sa.Text(), server_default='', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_api_tokens_account_id_accounts'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash')),
    )
    op.create_index('ix_api_tokens_account_id', 'api_tokens', ['account_id'], unique=False)
    op.create_table(
        'seen_signatures',
        sa.Column('digest', sa.LargeBinary(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('digest', name=op.f('pk_seen_signatures')),
    )
    op.create_index('ix_seen_signatures_expires_at', 'seen_signatures', ['expires_at'], unique=False)
    # A flag set while a sync was queued, now a queued run row. A flag still set was waiting for a task
    # that the upgraded worker adopts as "no queued run": it starts a run of its own, nothing is lost.
    op.drop_column('accounts', 'sync_requested_at')
    op.create_index('uq_sync_runs_one_queued', 'sync_runs', ['account_id'], unique=True,
                    postgresql_where=sa.text("status = 'queued'"))


def downgrade() -> None:
    op.execute("UPDATE sync_runs SET status = 'abandoned', error = 'queued before a downgrade', "
               "finished_at = now() WHERE status = 'queued'")
    op.drop_index('uq_sync_runs_one_queued', table_name='sync_runs', postgresql_where=sa.text("status = 'queued'"))
    op.add_column('accounts', sa.Column('sync_requested_at', sa.DateTime(timezone=True), nullable=True))
    op.drop_index('ix_seen_signatures_expires_at', table_name='seen_signatures')
    op.drop_table('seen_signatures')
    op.drop_index('ix_api_tokens_account_id', table_name='api_tokens')
    op.drop_table('api_tokens')
