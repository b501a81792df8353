"""The Celery app. Its configuration comes from Settings; its tasks live in tasks.stages, tasks.syncs and
tasks.maintenance; tasks.metrics records what every task does."""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.signals import celeryd_after_setup, worker_init, worker_process_init, worker_process_shutdown
from celery.worker import state as worker_state
from kombu.transport import sqlalchemy as sqla_transport

from pipeline.runs import fill_progress_cache_on_start
from pipeline.storage.db import dispose_engines, migrate
from tasks import child_memory, context, prefork
from tasks.config import celery_config

prefork.install()

# kombu's SQLAlchemy transport (the embedded broker) sleeps this long whenever a poll finds nothing it
# may take, including while every pool child is busy: with its default of 1 s a worker took at most
# one new task per child per second, whatever the tasks' length. Transport options cannot set it
# (kombu hands them all to create_engine), the class attribute can. A 2k-message import without
# embeddings took 25.6 s at 1 s and 10-20 s at 0.1 (the machine shared); an idle worker at 0.05 s
# cost ~8% of a core (its polls and Postgres answering them), 0.1 s about half that.
EMBEDDED_BROKER_POLL_SECONDS = 0.1
sqla_transport.Transport.polling_interval = EMBEDDED_BROKER_POLL_SECONDS
# The worker's loop for transports without asynchronous I/O waits in drain_events(timeout=2.0) and
# only then sees that a SIGTERM asked it to stop: 2 s of every CLI command's shutdown. Here a call
# polls the queues once and, finding nothing, sleeps one poll interval before it returns, so the loop
# sees a stop request within about that. (kombu's own loop with a short timeout polled again at once
# on each new call: with 0.1 s, twice per interval, and an idle worker cost a fifth more CPU.)
_drain_events = sqla_transport.Transport.drain_events


def _drain_events_briefly(self: sqla_transport.Transport, connection: object, timeout: float | None = None) -> object:
    if timeout is None:  # a caller that blocks until a message comes: kombu's loop as it is
        return _drain_events(self, connection, timeout=None)
    if _asked_to_stop():
        # Celery's loop drains once more after its shutdown check has raised (in a `finally`): a
        # warm shutdown waited that long for nothing, and a message taken then only went back.
        raise TimeoutError()  # what kombu raises when a drain finds nothing (socket.timeout)
    try:
        return _drain_events(self, connection, timeout=0)  # one round of the queues, no sleep
    except TimeoutError:
        time.sleep(min(timeout, self.polling_interval))
        raise


def _asked_to_stop() -> bool:
    """The flags celery.worker.state.maybe_shutdown raises on (by identity: a warm stop's code is 0)."""
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))


sqla_transport.Transport.drain_events = _drain_events_briefly  # type: ignore[method-assign,assignment]

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
    _forget_broker_connections()
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


def _forget_broker_connections() -> None:
    """Drop the embedded broker's pooled connections in a newly forked child.

    kombu's SQLAlchemy transport caches its engines on the Channel class, so a child forked after
    the parent has connected (one replacing a retired child) would publish on the parent's own
    Postgres session: "prepared statement already exists", and the publish is lost.
    """
    from kombu.transport import sqlalchemy as sqla_transport

    for engine, _session_factory in list(sqla_transport.Channel._engines.values()):
        engine.dispose(close=False)
