"""Metrics, Celery side: what every worker records (signals), and the Prometheus exposition.

    exposition(engine, settings, redis=None, *, queues=ALL_QUEUES) -> tuple[bytes, str]

returns (body, content type) of mailpipe's metrics in Prometheus' text format, computed when called from
shared state only (PostgreSQL, the Redis every worker records into, the broker's queues), so any process
can serve it: the web app mounts it at /metrics. `redis` is a client of mailpipe's shared Redis; None
makes one from the settings (MAILPIPE_REDIS_URL, else a Redis broker), and without any Redis the series
recorded there are left out. `queues`: whose depth to report (default: every mailpipe queue). It does
blocking I/O (a few queries, a few Redis round trips): from FastAPI, call it in a plain `def` route, which
runs in the thread pool. Series and where they come from: pipeline/metrics.py.

What workers record, cheaply: each task's end is one pipelined round trip to Redis (latency bucket,
count, sum, end state, and a stage's messages); a task that raises adds one HINCRBY (errors by task and
class); each process publishes its RSS at most every RSS_PUBLISH_SECONDS (a prefork parent, from the
worker's heartbeat, for itself and its children; a child, after a task). A Redis that does not answer
is skipped for REDIS_BACKOFF_SECONDS: metrics never slow or fail a task.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import psutil
import redis
from celery import Task
from celery.signals import heartbeat_sent, task_failure, task_postrun, task_prerun, worker_process_init
from sqlalchemy import Engine

from pipeline.metrics import (
    MetricsStore,
    Snapshot,
    collect,
    redis_queue_depths,
    redis_unacked,
    render,
    sql_queue_depths,
)
from pipeline.resilience.classify import classify
from pipeline.resilience.shared_redis import shared_redis_url
from pipeline.settings import Settings
from tasks import context
from tasks.config import QUEUES, SYNC_QUEUE

log = logging.getLogger(__name__)

ALL_QUEUES = (*QUEUES, SYNC_QUEUE)
RSS_PUBLISH_SECONDS = 10.0
REDIS_BACKOFF_SECONDS = 30.0


def metrics_client(url: str) -> redis.Redis:
    """A client that gives up fast: recording sits on every task's path, and a scrape must answer."""
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)


@functools.cache
def _scrape_client(url: str) -> redis.Redis:
    # One pool per URL for the life of the serving process (the web app scrapes every few seconds).
    return metrics_client(url)


def exposition(engine: Engine, settings: Settings, redis: redis.Redis | None = None, *,
               queues: Sequence[str] = ALL_QUEUES) -> tuple[bytes, str]:
    """mailpipe's metrics in Prometheus' text format: (body, content type). See the module docstring."""
    return render(snapshot(engine, settings, redis, queues=queues))


def snapshot(engine: Engine, settings: Settings, redis: redis.Redis | None = None, *,
             queues: Sequence[str] = ALL_QUEUES) -> Snapshot:
    """Everything `exposition` and `mailpipe status` show, read once; `queues`: whose depth to report."""
    shared = shared_redis_url(settings)
    client = redis if redis is not None else (_scrape_client(shared) if shared else None)
    store = MetricsStore(client, settings.metrics_key_prefix) if client is not None else None
    broker = settings.broker_url or ""
    if broker.startswith(("redis://", "rediss://")):
        lists = client if client is not None and broker == shared else _scrape_client(broker)
        return collect(engine, settings, store, lambda: redis_queue_depths(lists, queues),
                       lambda: redis_unacked(lists))
    if not broker or broker.startswith("sqla+"):  # kombu's SQLAlchemy transport on mailpipe's database
        return collect(engine, settings, store, lambda: sql_queue_depths(engine, queues))
    return collect(engine, settings, store)  # another broker (AMQP): its own tools show its queues


# ---------------------------------------------------------------- recording, in workers


class _Recorder:
    """This process's metrics store, made on first use (after the fork), skipped a while after Redis fails."""

    def __init__(self) -> None:
        self._store: MetricsStore | None = None
        self._made = False
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._last_rss = 0.0

    def reset(self) -> None:
        with self._lock:
            self._store, self._made, self._down_until, self._last_rss = None, False, 0.0, 0.0

    def store(self) -> MetricsStore | None:
        if time.monotonic() < self._down_until:
            return None
        with self._lock:
            if not self._made:
                settings = context.settings()
                url = shared_redis_url(settings)
                self._store = MetricsStore(metrics_client(url), settings.metrics_key_prefix) if url else None
                self._made = True
        return self._store

    def failed(self, exc: BaseException) -> None:
        log.warning("metrics not recorded for %.0f s: Redis failed (%s)", REDIS_BACKOFF_SECONDS, exc)
        self._down_until = time.monotonic() + REDIS_BACKOFF_SECONDS

    def rss_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_rss < RSS_PUBLISH_SECONDS:
            return False
        self._last_rss = now
        return True


_recorder = _Recorder()
_started: dict[str, float] = {}


@worker_process_init.connect
def _fresh_after_fork(**_: Any) -> None:
    _recorder.reset()
    _started.clear()


@task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_ended(task_id: str | None = None, task: Task | None = None, retval: Any = None, state: str | None = None,
                **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    store = _recorder.store()
    if store is None or task is None or started is None:
        return
    stage = messages = None
    if isinstance(retval, dict) and retval.get("outcome") == "done":
        stage, messages = retval.get("stage"), retval.get("messages")
    try:
        store.record_task(task.name, state or "UNKNOWN", time.monotonic() - started,
                          stage=stage if isinstance(stage, str) else None,
                          messages=messages if isinstance(messages, int) else 0)
        if _recorder.rss_due():
            worker = getattr(task.request, "hostname", None) or "unknown"
            process = psutil.Process()
            store.publish_rss(worker, {process.pid: process.memory_info().rss})
    except (redis.RedisError, OSError) as exc:
        _recorder.failed(exc)


@task_failure.connect
def _task_raised(sender: Task | None = None, exception: BaseException | None = None, **_: Any) -> None:
    store = _recorder.store()
    if store is None or sender is None or exception is None:
        return
    try:
        store.record_error(sender.name, classify(exception))
    except (redis.RedisError, OSError) as exc:
        _recorder.failed(exc)


@heartbeat_sent.connect
def _worker_heartbeat(sender: Any = None, **_: Any) -> None:
    """A worker's main process, every heartbeat: its own RSS and its pool children's (rate-limited)."""
    if not _recorder.rss_due():
        return
    store = _recorder.store()
    worker = getattr(getattr(sender, "eventer", None), "hostname", None)
    if store is None or not worker:
        return
    try:
        me = psutil.Process()
        rss = {me.pid: me.memory_info().rss}
        for child in me.children():
            try:
                rss[child.pid] = child.memory_info().rss
            except psutil.Error:
                continue  # a child replaced (max tasks per child) between the listing and the read
        store.publish_rss(worker, rss)
    except (redis.RedisError, OSError, psutil.Error) as exc:
        _recorder.failed(exc)


__all__ = ["ALL_QUEUES", "exposition", "metrics_client", "snapshot"]
