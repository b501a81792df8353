"""ai reservations: each LLM call's hold on the daily budget, expiring if its worker dies

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 21:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ai_reservations',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('usd', sa.Float(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_ai_reservations_account_day_expires', 'ai_reservations',
                    ['account_id', 'day', 'expires_at'], unique=False)
    # Amounts reserved before this table existed have no row to expire: calls in flight now settle
    # against a sum that no longer holds them, so start from nothing in flight.
    op.execute("UPDATE ai_usage SET reserved_usd = 0")


def downgrade() -> None:
    op.drop_index('ix_ai_reservations_account_day_expires', table_name='ai_reservations')
    op.drop_table('ai_reservations')
