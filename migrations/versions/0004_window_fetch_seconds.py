"""windows.fetch_seconds: observed Gmail fetch time, which sizes ingest time limits

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('windows', sa.Column('fetch_seconds', sa.Float(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('windows', 'fetch_seconds')
