"""gmail aliases: other Gmail ids of a message held once (same Message-ID)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 20:40:00.000000
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gmail_aliases',
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('gmail_id', sa.Text(), nullable=False),
        sa.Column('message_id', sa.BigInteger(), nullable=False),
        sa.Column('labels', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('account_id', 'gmail_id'),
    )
    op.create_index('ix_gmail_aliases_message_id', 'gmail_aliases', ['message_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_gmail_aliases_message_id', table_name='gmail_aliases')
    op.drop_table('gmail_aliases')
