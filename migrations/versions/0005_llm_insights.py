"""LLM insights: what each summary covers (incremental updates) and the per-account daily AI ledger

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('insights', sa.Column('summarized_messages', sa.Integer(), server_default='0', nullable=False))
    op.add_column('insights', sa.Column('summarized_through', sa.BigInteger(), nullable=True))
    op.create_foreign_key(op.f('fk_insights_summarized_through_messages'), 'insights', 'messages',
                          ['summarized_through'], ['id'], ondelete='SET NULL')
    op.create_table('ai_usage',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('calls', sa.Integer(), server_default='0', nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cost_usd', sa.Float(), server_default='0', nullable=False),
    sa.Column('reserved_usd', sa.Float(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_ai_usage_account_id_accounts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'day', name=op.f('pk_ai_usage'))
    )


def downgrade() -> None:
    op.drop_table('ai_usage')
    op.drop_constraint(op.f('fk_insights_summarized_through_messages'), 'insights', type_='foreignkey')
    op.drop_column('insights', 'summarized_through')
    op.drop_column('insights', 'summarized_messages')
