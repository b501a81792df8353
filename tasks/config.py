"""Celery configuration derived from the one Settings object."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from pipeline.resilience.timeouts import visibility_timeout
from pipeline.settings import Settings
from tasks.beat import beat_schedule

QUEUES = ("ingest", "normalize", "ai")  # the stages; the CLI's own worker pool consumes these
# Triggered syncs (push, beat, web hook) drive a whole run and wait on it: their own workers, so a
# burst of them can never occupy the slots the stages need.
SYNC_QUEUE = "sync"
ROUTES = {
    "mailpipe.sync": {"queue": SYNC_QUEUE},
    "mailpipe.renew_watches": {"queue": SYNC_QUEUE},
    "mailpipe.schedule_syncs": {"queue": SYNC_QUEUE},
    "mailpipe.ingest": {"queue": "ingest"},
    "mailpipe.normalize": {"queue": "normalize"},
    "mailpipe.contacts": {"queue": "normalize"},
    "mailpipe.embed": {"queue": "ai"},
    # Upkeep is a few queries and publishes: no AI slot needed.
    "mailpipe.sweep_enrichment": {"queue": "normalize"},
    "mailpipe.watchdog": {"queue": "normalize"},
    "mailpipe.retention": {"queue": "normalize"},
    "mailpipe.reconcile_counters": {"queue": "normalize"},
    "mailpipe.insight": {"queue": "ai"},
}

PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}
# Publishing while a client waits (the web API): one quick retry, then the request fails with 503.
REQUEST_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.3}
# Beat wakes at least this often. With RedBeat it is also the lock's rhythm: the lock lives 5 ticks, so a
# standby beat takes over within ~30 s of the running one dying (at once when it stops cleanly).
BEAT_MAX_LOOP_INTERVAL = 5.0


def broker_url_for(settings: Settings, database_url: str) -> str:
    """The configured broker, or kombu's SQLAlchemy transport on mailpipe's own database."""
    if settings.broker_url:
        return settings.broker_url
    return "sqla+" + database_url


def prefetch_multiplier(settings: Settings, broker: str) -> int:
    """Messages a worker reserves per child. One (DESIGN.md §4), except on the embedded SQL broker:
    its consumer polls, and a child that finished waited up to a poll interval (0.1 s) for its next
    task, ~15% of a 10k import's wall clock. A second reserved message is handed over at once: 31.5 s
    against 37.8 s for that import, alternating A/B (docs/PERFORMANCE.md, backfill). The embedded pool
    is one worker node, so no other node is starved of what it holds; a main process killed loses
    twice as many reserved messages, which the driver's watchdog re-sends as it does the first."""
    if settings.worker_prefetch_multiplier is not None:
        return settings.worker_prefetch_multiplier
    return 2 if broker.startswith("sqla+") else 1


# KiB a pool child may grow since it became ready (tasks.child_memory) before it is replaced after its
# task. With the local embedder torch's allocations fragment a child's heap: its first embed task grew
# it by 70-140 MiB and each later one its peak by up to 30 more, so at 100 most children were replaced
# after their first embed task. Most of that was freed heap the C allocator kept; handed back before
# each check, a 20k import's two children ran to the end (docs/PERFORMANCE.md, twenty-first round), and
# the limit is left to replace a child whose tasks keep what they allocate. Otherwise nothing grows
# (all five stages in one process stayed at 187 MiB for 50 windows).
LOCAL_EMBEDDER_GROWTH_MIB = 100
GROWTH_MIB = 1024


def max_growth_kib(settings: Settings) -> int:
    """KiB a worker child may grow since it was ready before it is replaced after its task."""
    if settings.worker_max_growth_mib is not None:
        return settings.worker_max_growth_mib * 1024
    return (LOCAL_EMBEDDER_GROWTH_MIB if settings.embedder == "local" else GROWTH_MIB) * 1024


def max_tasks_per_child(settings: Settings) -> int | None:
    """Tasks before a worker child is replaced: never unless chosen (the growth limit above replaces the
    children that need it). Each new child opens fresh database connections and re-imports what its
    first tasks use: replacing them every 25 tasks with embeddings off cost ~11% of a 10k import's wall
    clock (docs/PERFORMANCE.md, seventh round)."""
    return settings.worker_max_tasks_per_child or None


def celery_config(settings: Settings, database_url: str) -> dict[str, Any]:
    broker = broker_url_for(settings, database_url)
    # A message unacknowledged for longer than this is handed to another worker: it must outlast the
    # longest task plus its longest countdown, or tasks run twice (DESIGN.md §4).
    visibility = visibility_timeout(settings)
    transport: dict[str, Any] = {}
    if broker.startswith(("redis://", "rediss://")):
        transport = {
            "visibility_timeout": visibility,
            "health_check_interval": 10,
            "socket_keepalive": True,
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "retry_on_timeout": True,
        }
    # kombu's SQLAlchemy transport passes every transport option to create_engine, so its polling
    # interval cannot be tuned here: tasks.embedded_broker sets it.
    return {
        "broker_url": broker,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # Celery's default gives up a publish after about 0.6 s; a broker restart takes seconds, and a
        # stage whose successors could not be sent waits for the driver's watchdog. This rides out ~35 s.
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_ignore_result": True,  # state lives in Postgres; no result backend is needed
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": prefetch_multiplier(settings, broker),
        "task_soft_time_limit": settings.stage_soft_time_limit,
        "task_time_limit": settings.stage_time_limit,
        "task_queues": [Queue(q) for q in (*QUEUES, SYNC_QUEUE)],
        "task_default_queue": "normalize",
        "task_routes": ROUTES,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": broker.startswith(("redis://", "rediss://", "amqp://")),
        "task_send_sent_event": broker.startswith(("redis://", "rediss://", "amqp://")),
        "worker_enable_remote_control": not broker.startswith("sqla+"),
        "worker_hijack_root_logger": False,
        # Growth since the child was ready, not its whole RSS (tasks.child_memory).
        "worker_max_memory_per_child": max_growth_kib(settings),
        "worker_max_tasks_per_child": max_tasks_per_child(settings),
        "beat_schedule": beat_schedule(settings),
        "beat_max_loop_interval": BEAT_MAX_LOOP_INTERVAL,
        **beat_scheduler(settings, broker),
    }


def beat_scheduler(settings: Settings, broker: str) -> dict[str, Any]:
    """RedBeat on a Redis broker: the schedule in Redis, and a lock so that a second beat waits instead of
    sending every task twice. Otherwise Celery's default scheduler (a local file): run exactly one beat."""
    if not broker.startswith(("redis://", "rediss://")):
        return {}
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": broker,
        "redbeat_key_prefix": settings.beat_key_prefix,
        # Set explicitly (RedBeat otherwise borrows the broker's transport options, with a warning). It
        # retries its Redis calls for this long across a restart instead of ending the beat.
        "redbeat_redis_options": {"retry_period": 120, "socket_timeout": 30, "socket_connect_timeout": 10,
                                  "socket_keepalive": True, "health_check_interval": 10},
    }
