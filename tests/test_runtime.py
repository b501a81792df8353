"""tasks.runtime: what a CLI command holds around it (the database, the schema, its own workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks.runtime as runtime_module
from pipeline.settings import Settings
from tasks.workers import WorkerPool

pytestmark = pytest.mark.integration


class MigrationFailed(Exception):
    pass


def test_workers_started_before_the_migration_are_stopped_when_it_fails(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runtime() exports the URLs it chose; set them here so the test leaves the environment as it was.
    monkeypatch.setenv("MAILPIPE_DATABASE_URL", pg_url)
    monkeypatch.setenv("MAILPIPE_BROKER_URL", "sqla+" + pg_url)
    monkeypatch.delenv("MAILPIPE_BROKER_URL")  # unset: the embedded default, whose pool the CLI runs
    pools: list[WorkerPool] = []

    class RecordedPool(WorkerPool):
        def start(self) -> None:
            pools.append(self)
            super().start()

    def failing_migrate(url: str) -> None:
        raise MigrationFailed(url)

    monkeypatch.setattr(runtime_module, "WorkerPool", RecordedPool)
    monkeypatch.setattr(runtime_module, "migrate", failing_migrate)
    settings = Settings(database_url=pg_url, home=tmp_path, worker_concurrency=1, embedder="none")
    with pytest.raises(MigrationFailed), runtime_module.runtime(settings, workers=True):
        pytest.fail("the runtime must not be handed out when the schema cannot be migrated")
    assert len(pools) == 1 and pools[0].process is not None
    assert pools[0].process.poll() is not None  # the pool booting beside the migration was stopped
