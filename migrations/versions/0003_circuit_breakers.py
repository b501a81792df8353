"""circuit breakers, AIMD rate factor on quota buckets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('circuit_breakers',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='closed', nullable=False),
    sa.Column('fail_counter', sa.Integer(), server_default='0', nullable=False),
    sa.Column('success_counter', sa.Integer(), server_default='0', nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('probe_until', sa.Float(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_circuit_breakers'))
    )
    op.add_column('quota_buckets', sa.Column('rate_factor', sa.Float(), server_default='1', nullable=False))
    op.add_column('quota_buckets', sa.Column('decreased_at', sa.Float(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('quota_buckets', 'decreased_at')
    op.drop_column('quota_buckets', 'rate_factor')
    op.drop_table('circuit_breakers')
