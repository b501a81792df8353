"""What a CLI command needs around it: the database (embedded if unset), the schema, the workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine

from pipeline.settings import Settings, get_settings
from pipeline.storage.db import database_url, engine_for, migrate
from tasks import context
from tasks.config import broker_url_for
from tasks.workers import WorkerPool


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    database_url: str
    broker_url: str
    pool: WorkerPool | None

    def dispatch(self, window_id: int) -> None:
        from tasks.chains import dispatch_window

        dispatch_window(window_id)

    def resume_owed_enrichment(self) -> None:
        """Hand enrichment an earlier AI outage left owed to the workers (beat does this periodically)."""
        from pipeline.enrichment import endpoint_wait, sweep
        from tasks.chains import dispatch_stage

        sweep(self.engine, dispatch_stage, endpoint_open=lambda: endpoint_wait(self.settings, self.engine))

    def alive(self) -> bool:
        return self.pool.check() if self.pool else False

    @property
    def alive_check(self) -> Callable[[], bool] | None:
        return self.alive if self.pool else None


@contextmanager
def runtime(settings: Settings, *, workers: bool = False) -> Iterator[Runtime]:
    """Open the database (migrated) and, when asked and no broker is configured, a worker pool."""
    url = database_url(settings)
    broker = broker_url_for(settings, url)
    # Workers and the Celery app read the same URLs from the environment.
    os.environ["MAILPIPE_DATABASE_URL"] = url
    os.environ["MAILPIPE_BROKER_URL"] = broker
    get_settings.cache_clear()
    context.resolved_database_url.cache_clear()
    pool = None
    if workers and not settings.broker_url:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        pool = WorkerPool(env, settings.worker_concurrency, settings.home / "logs" / "worker.log",
                          log_level=settings.worker_log_level)
        pool.start()
    try:
        # The pool boots (~1.3 s of imports and forks) while this migrates: a new home's migrations took
        # ~0.5 s. Its workers migrate when they start too; both wait on env.py's advisory lock, and
        # whichever comes second finds the schema at head.
        migrate(url)
        yield Runtime(settings, engine_for(url), url, broker, pool)
    finally:
        if pool:
            pool.stop()
