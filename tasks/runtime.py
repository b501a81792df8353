"""What a CLI command needs around it: the database (embedded if unset), the schema, the workers.

The workers, when no broker is configured: a running `mailpipe worker` of the same data folder if
there is one (its pool is booted already: torch's import alone is seconds), else a pool of the
command's own, also started if that `mailpipe worker` stops while the command waits on its work."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine

from pipeline.runs import fill_progress_cache_on_start
from pipeline.settings import Settings, get_settings
from pipeline.storage.db import database_url, engine_for, migrate
from tasks import context
from tasks.config import broker_url_for
from tasks.workers import StandingWorker, WorkerPool, find_standing_worker


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    database_url: str
    broker_url: str
    pool: WorkerPool | None
    standing: StandingWorker | None = None  # the `mailpipe worker` the work goes to
    upgraded: bool = False  # this command's start upgraded the schema
    progress_cached: int = 0  # finished runs whose figures its start then cached (pipeline.runs.fill_progress_cache)

    def dispatch(self, window_id: int) -> None:
        from tasks.chains import dispatch_window

        dispatch_window(window_id)

    def resume_owed_enrichment(self) -> None:
        """Hand enrichment an earlier AI outage left owed to the workers (beat does this periodically)."""
        from pipeline.enrichment import endpoint_wait, sweep
        from tasks.chains import dispatch_stage

        sweep(self.engine, dispatch_stage, endpoint_open=lambda: endpoint_wait(self.settings, self.engine))

    def restarted(self) -> bool:
        """True when the workers were gone and new ones were started: what was sent to the old is sent again.

        A `mailpipe worker` that stopped is replaced by a pool of this command's own."""
        if self.standing is not None:
            if self.standing.running():
                return False
            self.standing = None
            self.pool = own_pool(self.settings)
            self.pool.start()
            return True
        return self.pool.check() if self.pool else False

    def workers_running(self) -> bool:
        """Whether anything is left to do the work handed out (a restart counts as running)."""
        self.restarted()
        return self.standing is not None or (self.pool is not None and self.pool.running())

    @property
    def restart_check(self) -> Callable[[], bool] | None:
        """For a driver: new workers mean its open windows are sent again. None: the workers are not ours."""
        return self.restarted if self.pool or self.standing else None

    @property
    def running_check(self) -> Callable[[], bool] | None:
        """For a wait on work in the workers' hands: false once nothing is left to do it."""
        return self.workers_running if self.pool or self.standing else None


def own_pool(settings: Settings) -> WorkerPool:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return WorkerPool(env, settings.worker_concurrency, settings.home / "logs" / "worker.log",
                      log_level=settings.worker_log_level)


@contextmanager
def runtime(settings: Settings, *, workers: bool = False, standing: bool = True) -> Iterator[Runtime]:
    """Open the database (migrated) and, when asked and no broker is configured, workers: a running
    `mailpipe worker`'s unless `standing` is false (work whose settings only this command's environment
    holds: the demo's Gmail server), else a pool of its own."""
    url = database_url(settings)
    broker = broker_url_for(settings, url)
    # Workers and the Celery app read the same URLs from the environment.
    os.environ["MAILPIPE_DATABASE_URL"] = url
    os.environ["MAILPIPE_BROKER_URL"] = broker
    get_settings.cache_clear()
    context.resolved_database_url.cache_clear()
    pool = running = None
    if workers and not settings.broker_url:
        running = find_standing_worker(settings.home, broker) if standing else None
        if running is None:
            pool = own_pool(settings)
            pool.start()
    rt: Runtime | None = None
    try:
        # The pool boots (~1.3 s of imports and forks) while this migrates: a new home's migrations took
        # ~0.5 s. Its workers migrate when they start too; both wait on env.py's advisory lock, and
        # whichever comes second finds the schema at head.
        upgraded = migrate(url)
        rt = Runtime(settings, engine_for(url), url, broker, pool, running, upgraded=upgraded)
        if upgraded:  # the workers fill it when they start, but standing ones did not restart
            rt.progress_cached = fill_progress_cache_on_start(rt.engine)
        yield rt
    finally:
        pool = rt.pool if rt else pool  # a pool started when a `mailpipe worker` stopped, too
        if pool:
            pool.stop()
