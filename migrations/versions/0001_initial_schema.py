"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
import pgvector.sqlalchemy
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # pgvector must exist before the embedding column; the server must ship it (pgvector image, pgserver).
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table('accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('kind', sa.String(length=16), server_default='mbox', nullable=False),
    sa.Column('own_addresses', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('status', sa.String(length=32), server_default='active', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('email', name=op.f('uq_accounts_email'))
    )
    op.create_table('contacts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), server_default='', nullable=False),
    sa.Column('names', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('company', sa.Text(), nullable=True),
    sa.Column('sent_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('received_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('thread_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rank_log', sa.Float(), nullable=True),
    sa.Column('rank_key', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_contacts_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contacts')),
    sa.UniqueConstraint('account_id', 'email', name=op.f('uq_contacts_account_id_email'))
    )
    op.create_index('ix_contacts_account_id_rank_key', 'contacts', ['account_id', 'rank_key'], unique=False)
    op.create_table('sync_runs',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='running', nullable=False),
    sa.Column('reading_done', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('entries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('windows_total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('driver', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_sync_runs_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    op.create_index('ix_sync_runs_account_id_started_at', 'sync_runs', ['account_id', 'started_at'], unique=False)
    op.create_index('uq_sync_runs_one_running', 'sync_runs', ['account_id'], unique=True, postgresql_where=sa.text("status = 'running'"))
    op.create_table('threads',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('thread_key', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), server_default='', nullable=False),
    sa.Column('message_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('first_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_threads_account_id_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_threads')),
    sa.UniqueConstraint('account_id', 'thread_key', name=op.f('uq_threads_account_id_thread_key'))
    )
    op.create_index('ix_threads_account_id_last_at', 'threads', ['account_id', 'last_at'], unique=False)
    op.create_table('contact_threads',
    sa.Column('contact_id', sa.BigInteger(), nullable=False),
    sa.Column('thread_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_contact_threads_contact_id_contacts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['thread_id'], ['threads.id'], name=op.f('fk_contact_threads_thread_id_threads'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('contact_id', 'thread_id', name=op.f('pk_contact_threads'))
    )
    op.create_table('insights',
    sa.Column('thread_id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('needs_reply', sa.String(length=32), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('action_items', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_insights_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['thread_id'], ['threads.id'], name=op.f('fk_insights_thread_id_threads'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('thread_id', name=op.f('pk_insights'))
    )
    op.create_index('ix_insights_account_id_needs_reply', 'insights', ['account_id', 'needs_reply'], unique=False)
    op.create_table('messages',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('message_key', sa.Text(), nullable=False),
    sa.Column('rfc_message_id', sa.Text(), nullable=True),
    sa.Column('source_ref', sa.Text(), nullable=False),
    sa.Column('gmail_thread_id', sa.String(length=64), nullable=True),
    sa.Column('labels', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('thread_id', sa.BigInteger(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('from_email', sa.Text(), nullable=True),
    sa.Column('from_name', sa.Text(), nullable=True),
    sa.Column('recipients', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('in_reply_to', sa.Text(), nullable=True),
    sa.Column('references', postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column('content_type', sa.String(length=128), nullable=True),
    sa.Column('category', sa.String(length=32), nullable=True),
    sa.Column('from_me', sa.Boolean(), nullable=True),
    sa.Column('is_bulk', sa.Boolean(), nullable=True),
    sa.Column('full_text', sa.Text(), nullable=True),
    sa.Column('stripped_text', sa.Text(), nullable=True),
    sa.Column('attachments', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('defects', postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column('tsv', postgresql.TSVECTOR(), sa.Computed("to_tsvector('english'::regconfig, coalesce(subject, '') || ' ' || coalesce(stripped_text, ''))", persisted=True), nullable=False),
    sa.Column('normalized_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('contacts_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('embedded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('insight_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_messages_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['thread_id'], ['threads.id'], name=op.f('fk_messages_thread_id_threads'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('account_id', 'message_key', name=op.f('uq_messages_account_id_message_key'))
    )
    op.create_index('ix_messages_account_id_rfc_message_id', 'messages', ['account_id', 'rfc_message_id'], unique=False)
    op.create_index('ix_messages_account_id_sent_at', 'messages', ['account_id', 'sent_at'], unique=False)
    op.create_index('ix_messages_thread_id_sent_at', 'messages', ['thread_id', 'sent_at'], unique=False)
    op.create_index('ix_messages_tsv', 'messages', ['tsv'], unique=False, postgresql_using='gin')
    op.create_table('windows',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('ingest', sa.String(length=12), server_default='pending', nullable=False),
    sa.Column('normalize', sa.String(length=12), server_default='pending', nullable=False),
    sa.Column('contacts', sa.String(length=12), server_default='pending', nullable=False),
    sa.Column('embed', sa.String(length=12), server_default='pending', nullable=False),
    sa.Column('insight', sa.String(length=12), server_default='pending', nullable=False),
    sa.Column('finished', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('attempts', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('new_messages', sa.Integer(), server_default='0', nullable=False),
    sa.Column('duplicates', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('chunks_embedded', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], name=op.f('fk_windows_run_id_sync_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_windows')),
    sa.UniqueConstraint('run_id', 'seq', name=op.f('uq_windows_run_id_seq'))
    )
    op.create_index('ix_windows_open', 'windows', ['run_id'], unique=False, postgresql_where=sa.text('NOT finished'))
    op.create_table('embedding_chunks',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('chunk_index', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(dim=384), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_embedding_chunks_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_embedding_chunks_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_embedding_chunks')),
    sa.UniqueConstraint('message_id', 'content_hash', name=op.f('uq_embedding_chunks_message_id_content_hash'))
    )
    op.create_index('ix_embedding_chunks_content_hash', 'embedding_chunks', ['content_hash'], unique=False)
    op.create_index('ix_embedding_chunks_embedding_hnsw', 'embedding_chunks', ['embedding'], unique=False, postgresql_using='hnsw', postgresql_with={'m': 16, 'ef_construction': 64}, postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.create_table('failures',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('window_id', sa.BigInteger(), nullable=True),
    sa.Column('item_ref', sa.Text(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('error_class', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_failures_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], name=op.f('fk_failures_run_id_sync_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['window_id'], ['windows.id'], name=op.f('fk_failures_window_id_windows'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_failures')),
    sa.UniqueConstraint('window_id', 'stage', 'item_ref', name=op.f('uq_failures_window_id_stage_item_ref'))
    )
    op.create_index('ix_failures_account_id_created_at', 'failures', ['account_id', 'created_at'], unique=False)
    op.create_index('ix_failures_run_id', 'failures', ['run_id'], unique=False)
    op.create_table('message_participants',
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('contact_id', sa.BigInteger(), nullable=False),
    sa.Column('role', sa.String(length=12), nullable=False),
    sa.Column('direction', sa.String(length=12), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_message_participants_contact_id_contacts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_message_participants_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id', 'contact_id', name=op.f('pk_message_participants'))
    )
    op.create_index('ix_message_participants_contact_id', 'message_participants', ['contact_id'], unique=False)
    op.create_table('window_items',
    sa.Column('window_id', sa.BigInteger(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('source_ref', sa.Text(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.Column('gmail_thread_id', sa.String(length=64), nullable=True),
    sa.Column('labels', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=True),
    sa.Column('outcome', sa.String(length=12), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_window_items_message_id_messages'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['window_id'], ['windows.id'], name=op.f('fk_window_items_window_id_windows'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('window_id', 'position', name=op.f('pk_window_items'))
    )
    op.create_index('ix_window_items_message_id', 'window_items', ['message_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_window_items_message_id', table_name='window_items')
    op.drop_table('window_items')
    op.drop_index('ix_message_participants_contact_id', table_name='message_participants')
    op.drop_table('message_participants')
    op.drop_index('ix_failures_run_id', table_name='failures')
    op.drop_index('ix_failures_account_id_created_at', table_name='failures')
    op.drop_table('failures')
    op.drop_index('ix_embedding_chunks_embedding_hnsw', table_name='embedding_chunks', postgresql_using='hnsw', postgresql_with={'m': 16, 'ef_construction': 64}, postgresql_ops={'embedding': 'vector_cosine_ops'})
    op.drop_index('ix_embedding_chunks_content_hash', table_name='embedding_chunks')
    op.drop_table('embedding_chunks')
    op.drop_index('ix_windows_open', table_name='windows', postgresql_where=sa.text('NOT finished'))
    op.drop_table('windows')
    op.drop_index('ix_messages_tsv', table_name='messages', postgresql_using='gin')
    op.drop_index('ix_messages_thread_id_sent_at', table_name='messages')
    op.drop_index('ix_messages_account_id_sent_at', table_name='messages')
    op.drop_index('ix_messages_account_id_rfc_message_id', table_name='messages')
    op.drop_table('messages')
    op.drop_index('ix_insights_account_id_needs_reply', table_name='insights')
    op.drop_table('insights')
    op.drop_table('contact_threads')
    op.drop_index('ix_threads_account_id_last_at', table_name='threads')
    op.drop_table('threads')
    op.drop_index('uq_sync_runs_one_running', table_name='sync_runs', postgresql_where=sa.text("status = 'running'"))
    op.drop_index('ix_sync_runs_account_id_started_at', table_name='sync_runs')
    op.drop_table('sync_runs')
    op.drop_index('ix_contacts_account_id_rank_key', table_name='contacts')
    op.drop_table('contacts')
    op.drop_table('accounts')
