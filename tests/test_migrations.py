"""The schema is created by Alembic only, and the models and migrations agree."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from pipeline.storage.db import alembic_config, migrate


@pytest.fixture
def empty_database(pg_url: str) -> Iterator[str]:
    name = f"mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_head_on_an_empty_database_then_check_finds_no_drift(empty_database: str) -> None:
    migrate(empty_database)
    command.check(alembic_config(empty_database))  # raises when models and migrations differ
    tables = set(inspect(create_engine(empty_database)).get_table_names())
    assert {"accounts", "sync_runs", "windows", "window_items", "messages", "threads", "contacts",
            "message_participants", "embedding_chunks", "insights", "failures"} <= tables


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
