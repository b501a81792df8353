"""Alembic environment: the URL comes from the caller (pipeline.storage.db) or from settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from pipeline.storage.models import Base

MIGRATION_LOCK = 7_240_001  # advisory lock id: two processes starting at once migrate one at a time


def _url() -> str:
    url = context.config.attributes.get("url")
    if url:
        return str(url)
    from pipeline.settings import Settings
    from pipeline.storage.db import database_url

    return database_url(Settings())


def _include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    # kombu's SQLAlchemy transport keeps its own tables in the same database when it is the broker.
    return not (type_ == "table" and name and name.startswith("kombu_"))


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                include_object=_include_object,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


run_migrations_online()
