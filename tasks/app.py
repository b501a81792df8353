"""The Celery app. Its configuration comes from Settings; its tasks live in tasks.stages, tasks.syncs and
tasks.maintenance; tasks.metrics records what every task does."""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.signals import celeryd_after_setup, worker_init, worker_process_init, worker_process_shutdown

from pipeline.runs import fill_progress_cache_on_start
from pipeline.storage.db import dispose_engines, migrate
from tasks import child_memory, context, embedded_broker, prefork
from tasks.config import celery_config

prefork.install()
embedded_broker.install()  # kombu's SQLAlchemy transport, cheaper to poll (the embedded default's broker)

# tasks.metrics holds no task: its signal handlers record every task's metrics in the worker.
# Every broker connection is tasks.broker_connection's: without it a Redis restart while a worker held
# tasks could end the worker's main process.
app = Celery("mailpipe", include=["tasks.stages", "tasks.syncs", "tasks.maintenance", "tasks.metrics"],
             amqp="tasks.broker_connection:AMQP")
# Lazy: the configuration (and, on the embedded default, the database server behind the broker
# URL) is resolved on first use, after the CLI has put the URLs it chose into the environment.
app.add_defaults(lambda: celery_config(context.settings(), context.resolved_database_url()))


@worker_init.connect
def _migrate_on_start(**_: object) -> None:
    migrate(context.resolved_database_url())
    if _embeds_here():
        # Imported and built once in the parent, torch and the model are shared by every child it forks:
        # a child replaced once it has grown (tasks.child_memory) starts in well under a second instead
        # of seconds, and then only warms the model up. Never run here: torch starts its thread pool on
        # first use, which is in the child.
        from pipeline.embeddings.local import preload

        preload()


@celeryd_after_setup.connect
def _cache_progress_on_start(**_: object) -> None:
    # After an upgrade of the code or the schema: the finished runs' figures in the new layout are cached
    # here, once, rather than aggregated by the first `status` that shows them. Here rather than on
    # worker_init: the worker's logging is set up by now (and its pool not yet started).
    logging.getLogger("pipeline").setLevel(logging.INFO)  # as in the children: it says what it did
    fill_progress_cache_on_start(context.engine())


def _embeds_here() -> bool:
    if context.settings().embedder != "local":
        return False
    consumed = getattr(app.amqp.queues, "consume_from", None) or {}
    return not consumed or "ai" in consumed


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pooled connections inherited from the parent must not be shared with it.
    dispose_engines()
    embedded_broker.forget_connections()
    logging.getLogger("pipeline").setLevel(logging.INFO)
    if _embeds_here():
        _load_embedding_model()
    # From here on billiard's check after each task reads how much this child has grown.
    child_memory.measure_growth(app.conf.worker_max_memory_per_child or 0)


def _load_embedding_model() -> None:
    """Load the model before this child takes a task. Its first embed would load it otherwise: ~0.4 s
    inside a run, while the other children wait on that window's embeddings (a replaced child's load
    only moves here)."""
    started = time.perf_counter()
    try:
        context.embedding_tools().embedder.embed(["warm-up"])
        logging.getLogger(__name__).info("embedding model loaded in %.2f s", time.perf_counter() - started)
    except Exception:  # its first embed task fails the same way, with its error class, retries and report
        logging.getLogger(__name__).warning("could not load the embedding model ahead of the first task",
                                            exc_info=True)


@worker_process_shutdown.connect
def _child_exiting(exitcode: int = 0, **_: object) -> None:
    prefork.child_exiting(exitcode)
