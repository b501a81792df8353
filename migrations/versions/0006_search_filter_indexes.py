"""search filters: GIN on labels, btree on from_email, GIN on the sender's words

Without them a selective `search --label/--from` reads the whole messages table (raw bytes and
text included) to learn which messages it may return: hundreds of milliseconds at 100k messages.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 20:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# Same text as pipeline.storage.models.SENDER_WORDS_SQL (a migration keeps its own copy: frozen).
SENDER_WORDS = ("to_tsvector('simple'::regconfig, (COALESCE(from_name, ''::text) || ' '::text) || "
                "translate(COALESCE(from_email, ''::text), '@.+_-'::text, '     '::text))")


def upgrade() -> None:
    op.create_index('ix_messages_labels', 'messages', ['labels'], unique=False, postgresql_using='gin')
    op.create_index('ix_messages_from_email', 'messages', ['from_email'], unique=False)
    op.create_index('ix_messages_sender_words', 'messages', [sa.text(SENDER_WORDS)], unique=False,
                    postgresql_using='gin')


def downgrade() -> None:
    op.drop_index('ix_messages_sender_words', table_name='messages', postgresql_using='gin')
    op.drop_index('ix_messages_from_email', table_name='messages')
    op.drop_index('ix_messages_labels', table_name='messages', postgresql_using='gin')
