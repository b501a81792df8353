"""The schema is created by Alembic only, and the models and migrations agree."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from pipeline.storage.db import HEAD_REVISION, alembic_config, migrate, schema_revision

ROOT = Path(__file__).resolve().parents[1]


def test_upgrade_head_on_an_empty_database_then_check_finds_no_drift(empty_database: str) -> None:
    migrate(empty_database)
    command.check(alembic_config(empty_database))  # raises when models and migrations differ
    tables = set(inspect(create_engine(empty_database)).get_table_names())
    assert {"accounts", "sync_runs", "windows", "window_items", "messages", "threads", "contacts",
            "message_participants", "embedding_chunks", "insights", "failures"} <= tables


def test_head_revision_is_where_the_migrations_end() -> None:
    """migrate leaves a schema at HEAD_REVISION alone: a migration added without moving it would never run."""
    assert ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head() == HEAD_REVISION


def test_a_schema_at_head_is_left_without_loading_alembic_and_one_behind_is_migrated(empty_database: str) -> None:
    assert schema_revision(empty_database) is None
    migrate(empty_database)
    assert schema_revision(empty_database) == HEAD_REVISION
    check = ("import sys; from pipeline.storage.db import migrate; migrate(sys.argv[1]); "
             "print('alembic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check, empty_database], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
    command.downgrade(alembic_config(empty_database), "-1")
    assert schema_revision(empty_database) not in (None, HEAD_REVISION)
    migrate(empty_database)
    assert schema_revision(empty_database) == HEAD_REVISION


def test_downgrade_to_base_and_up_again(empty_database: str) -> None:
    migrate(empty_database)
    command.downgrade(alembic_config(empty_database), "base")
    assert "messages" not in inspect(create_engine(empty_database)).get_table_names()
    migrate(empty_database)
    assert "messages" in inspect(create_engine(empty_database)).get_table_names()


def test_hot_queries_have_indexes(empty_database: str) -> None:
    migrate(empty_database)
    insp = inspect(create_engine(empty_database))
    names = {ix["name"] for table in ("windows", "messages", "contacts", "embedding_chunks", "sync_runs")
             for ix in insp.get_indexes(table)}
    assert {"ix_windows_open", "ix_messages_thread_id_sent_at", "ix_contacts_account_id_rank_key",
            "ix_embedding_chunks_embedding_hnsw", "ix_messages_tsv", "uq_sync_runs_one_running"} <= names


_CHUNK = ("INSERT INTO embedding_chunks (message_id, account_id, chunk_index, content_hash, model, text, embedding) "
          "VALUES (:m, :a, :i, :h, 'm', :t, :v) RETURNING id")
_SAME = "SELECT embedding = CAST(:v AS vector) AND text = :t FROM embedding_chunks WHERE id = :id"
_OUT_OF_LINE = "SELECT pg_column_toast_chunk_id(embedding) IS NOT NULL FROM embedding_chunks WHERE id = :id"


def test_vectors_stored_out_of_line_are_moved_into_their_rows(empty_database: str) -> None:
    """Migration 0014: a chunk whose row passes the TOAST threshold keeps its vector in the row and moves
    its text out instead; chunks written before are rewritten so, with the same vector."""
    config = alembic_config(empty_database)
    command.upgrade(config, "0013")
    engine = create_engine(empty_database)
    long_text = secrets.token_hex(500)  # 1,000 characters that do not compress: the row is over 2 kB
    vector = "[" + ",".join(f"{(i % 7) / 7:.3f}" for i in range(384)) + "]"
    with engine.begin() as conn:
        account = conn.execute(text("INSERT INTO accounts (email) VALUES ('me@example.com') RETURNING id")).scalar()
        message = conn.execute(text(
            "INSERT INTO messages (account_id, message_key, source_ref, raw, size, content_hash) "
            "VALUES (:a, 'k', 'r', '\\x00', 1, 'h') RETURNING id"), {"a": account}).scalar()
        before = conn.execute(text(_CHUNK), {"m": message, "a": account, "i": 0, "h": "a", "t": long_text,
                                             "v": vector}).scalar()
        assert conn.execute(text(_OUT_OF_LINE), {"id": before}).scalar()  # pgvector's EXTERNAL moved it out
    command.upgrade(config, "head")
    with engine.begin() as conn:
        after = conn.execute(text(_CHUNK), {"m": message, "a": account, "i": 1, "h": "b", "t": long_text,
                                            "v": vector}).scalar()
        for chunk in (before, after):
            assert conn.execute(text(_OUT_OF_LINE), {"id": chunk}).scalar() is False
            assert conn.execute(text(_SAME), {"id": chunk, "v": vector, "t": long_text}).scalar()
    engine.dispose()
