"""Operational metrics: what is recorded where, the snapshot read at scrape time, and its Prometheus text.

Nothing lives in one process's memory: every figure is read when asked from shared state, so any process
(the web app's /metrics, `mailpipe status`) gives the same answer.

- PostgreSQL rows: failures by stage and class, running and stuck runs (pipeline.maintenance), Gmail
  accounts' quota buckets (PostgreSQL's when there is no Redis).
- Redis, written by every worker (`MetricsStore`, fed by Celery signals in tasks/metrics.py), one pipelined
  round trip per task: task latency histograms and end states, errors by task and class, messages through
  each stage (a total and 10-second buckets for the recent rate), and each worker process's RSS under a
  key that expires when the worker stops publishing it.
- The broker: queue depths (Redis lists, priority lists included; or the SQLAlchemy transport's table).
- Shared resilience state: breakers (pipeline.resilience.breakers), quota buckets (…quota).

Without Redis (the embedded default) the Redis-recorded series are simply absent.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from sqlalchemy import Engine, text

from pipeline.maintenance import StuckRun, stuck_runs
from pipeline.resilience.breakers import CLOSED, HALF_OPEN, OPEN, BreakerState, breaker_states
from pipeline.resilience.quota import CostTable, budget_for
from pipeline.resilience.shared_redis import shared_redis_url
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import STAGES

log = logging.getLogger(__name__)
T = TypeVar("T")

# Upper bounds (s) of the latency buckets: stage tasks take from milliseconds to the 10-minute stage
# limit, triggered syncs hours. The last, +Inf, is implied.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RATE_BUCKET_SECONDS = 10  # granularity of the recent stage rate
RATE_WINDOW_SECONDS = 60  # messages/s is measured over the last full minute of buckets
RSS_TTL_SECONDS = 60  # a worker not heard from for this long is no longer listed
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)

# kombu's Redis transport keeps a queue's priority levels in lists named queue + "\x06\x16" + step.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
# What generate_latest writes, and what every Prometheus version reads (the client's newer "latest", 1.0.0,
# only Prometheus 3 understands).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------- recording (Redis)


@dataclass(frozen=True, slots=True)
class TaskLatency:
    task: str
    buckets: tuple[int, ...]  # per bucket of LATENCY_BUCKETS, then +Inf; not cumulative
    count: int
    sum_seconds: float
    states: dict[str, int]  # SUCCESS, RETRY, FAILURE, ... -> tasks that ended so

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, math.inf), self.buckets, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(bound), total))
        return out


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    worker: str  # Celery node name, e.g. ingest@host
    processes: int
    rss_bytes: int  # all its processes (a prefork worker's parent and children)
    max_process_rss_bytes: int
    pids: tuple[int, ...]


class MetricsStore:
    """The Redis keys every worker records into and any process reads. One client, one key prefix.

    Layout (P = prefix): P+"tasks" set of task names; P+"task:"+name hash (b0..bN latency buckets, count,
    sum, state:<STATE>); P+"errors" hash ("task<TAB>class" -> n); P+"stage" hash (stage -> messages);
    P+"stage:"+bucket hash (stage -> messages in that 10 s bucket, expiring); P+"rss:"+worker+":"+pid
    (bytes, expiring).
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def record_task(self, task: str, state: str, seconds: float, *, stage: str | None = None,
                    messages: int = 0, now: float | None = None) -> None:
        """One task ended: its latency bucket, count, sum and end state; a stage's messages. One round trip."""
        bucket = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
        key = f"{self.prefix}task:{task}"
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(f"{self.prefix}tasks", task)
        pipe.hincrby(key, f"b{bucket}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", max(0.0, seconds))
        pipe.hincrby(key, f"state:{state}", 1)
        if stage and messages:
            slot = int((time.time() if now is None else now) // RATE_BUCKET_SECONDS)
            pipe.hincrby(f"{self.prefix}stage", stage, messages)
            pipe.hincrby(f"{self.prefix}stage:{slot}", stage, messages)
            pipe.expire(f"{self.prefix}stage:{slot}", RATE_WINDOW_SECONDS * 2 + RATE_BUCKET_SECONDS)
        pipe.execute()

    def record_error(self, task: str, error_class: str) -> None:
        self.client.hincrby(f"{self.prefix}errors", f"{task}\t{error_class}", 1)

    def publish_rss(self, worker: str, rss_by_pid: dict[int, int], ttl: float = RSS_TTL_SECONDS) -> None:
        """Each process's resident memory, listed until `ttl` s pass without it being published again."""
        if not rss_by_pid:
            return
        pipe = self.client.pipeline(transaction=False)
        for pid, rss in rss_by_pid.items():
            pipe.set(f"{self.prefix}rss:{worker}:{pid}", int(rss), ex=max(1, int(ttl)))
        pipe.execute()

    # -- reading

    def latencies(self) -> list[TaskLatency]:
        names = sorted(_text(n) for n in self.client.smembers(f"{self.prefix}tasks"))
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(f"{self.prefix}task:{name}")
        out = []
        for name, raw in zip(names, pipe.execute(), strict=True):
            fields = {_text(k): _text(v) for k, v in raw.items()}
            buckets = tuple(int(fields.get(f"b{i}", 0)) for i in range(len(LATENCY_BUCKETS) + 1))
            states = {k.split(":", 1)[1]: int(v) for k, v in fields.items() if k.startswith("state:")}
            out.append(TaskLatency(name, buckets, int(fields.get("count", 0)), float(fields.get("sum", 0.0)), states))
        return out

    def task_errors(self) -> dict[tuple[str, str], int]:
        raw = self.client.hgetall(f"{self.prefix}errors")
        out: dict[tuple[str, str], int] = {}
        for k, v in raw.items():
            task, _, error_class = _text(k).partition("\t")
            out[(task, error_class)] = int(v)
        return out

    def stage_totals(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.client.hgetall(f"{self.prefix}stage").items()}

    def stage_rates(self, now: float | None = None) -> dict[str, float]:
        """Messages per second through each stage over the last full minute of 10-second buckets."""
        current = int((time.time() if now is None else now) // RATE_BUCKET_SECONDS)
        slots = range(current - RATE_WINDOW_SECONDS // RATE_BUCKET_SECONDS, current)
        pipe = self.client.pipeline(transaction=False)
        for slot in slots:
            pipe.hgetall(f"{self.prefix}stage:{slot}")
        totals: dict[str, int] = defaultdict(int)
        for raw in pipe.execute():
            for k, v in raw.items():
                totals[_text(k)] += int(v)
        return {stage: totals.get(stage, 0) / RATE_WINDOW_SECONDS for stage in STAGES}

    def workers(self) -> list[WorkerSeen]:
        keys = sorted(_text(k) for k in self.client.scan_iter(match=f"{self.prefix}rss:*", count=1000))
        values = self.client.mget(keys) if keys else []
        per: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # expired between the scan and the read
            worker, _, pid = key[len(self.prefix) + len("rss:"):].rpartition(":")
            if pid.isdigit():
                per[worker].append((int(pid), int(value)))
        return [
            WorkerSeen(worker, len(procs), sum(r for _, r in procs), max(r for _, r in procs),
                       tuple(sorted(p for p, _ in procs)))
            for worker, procs in sorted(per.items())
        ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------- queue depths


def redis_queue_depths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue: the LLEN of its list and of its priority lists (kombu's layout).

    Messages a worker has reserved (prefetched, or waiting for their countdown) are not in the lists.
    """
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}")
    lengths = iter(pipe.execute())
    return {queue: sum(int(next(lengths)) for _ in KOMBU_PRIORITY_STEPS) for queue in queues}


def redis_unacked(client: redis.Redis) -> int:
    """Messages delivered to workers and not acknowledged yet (kombu's `unacked` hash), all queues."""
    return int(client.hlen("unacked"))


def sql_queue_depths(engine: Engine, queues: Sequence[str]) -> dict[str, int]:
    """Visible messages per queue of kombu's SQLAlchemy transport (the embedded default's broker)."""
    depths = dict.fromkeys(queues, 0)
    with transaction(engine) as s:
        if s.execute(text("SELECT to_regclass('kombu_message')")).scalar() is None:
            return depths  # nothing was ever published
        rows = s.execute(text(
            "SELECT q.name, count(m.id) FROM kombu_queue q JOIN kombu_message m ON m.queue_id = q.id "
            "WHERE m.visible AND q.name = ANY(:queues) GROUP BY q.name"), {"queues": list(queues)}).all()
    depths.update({str(name): int(n) for name, n in rows})
    return depths


# ---------------------------------------------------------------- PostgreSQL and shared resilience state


@dataclass(frozen=True, slots=True)
class FailureGroup:
    stage: str
    error_class: str
    count: int
    last_at: datetime | None = None
    example: str | None = None  # the latest reason, for `mailpipe status`


def failure_counts(engine: Engine, since_hours: float | None = None) -> list[FailureGroup]:
    """Failure rows by stage and class (all, or recorded in the last `since_hours`), largest first."""
    where = "" if since_hours is None else "WHERE created_at > now() - make_interval(secs => :secs)"
    with transaction(engine) as s:
        rows = s.execute(text(
            "SELECT stage, error_class, count(*), max(created_at), "
            "(array_agg(reason ORDER BY created_at DESC))[1] "
            f"FROM failures {where} GROUP BY stage, error_class ORDER BY count(*) DESC, stage, error_class"),
            {"secs": (since_hours or 0) * 3600}).all()
    return [FailureGroup(str(st), str(c), int(n), last, ex) for st, c, n, last, ex in rows]


@dataclass(frozen=True, slots=True)
class QuotaUse:
    account_id: int
    account: str
    limit_per_minute: float  # what mailpipe paces the account to: the per-user limit × the headroom
    used_last_minute: float | None  # units taken in the last 60 s (None: not counted by this store)
    tokens: float  # units the bucket could hand out right now
    capacity: float
    rate_factor: float  # AIMD share of the rate in force (below 1 after rate limits)
    paused_until: datetime | None  # set while a 429 pauses the whole account


def quota_use(engine: Engine, settings: Settings) -> list[QuotaUse]:
    """Every Gmail account's quota bucket: units used in the last minute against the limit, and any pause."""
    with transaction(engine) as s:
        accounts = s.execute(text("SELECT id, email FROM accounts WHERE kind = 'gmail' ORDER BY id")).all()
    if not accounts:
        return []
    budget = budget_for(settings, engine)
    table = CostTable.for_regime(settings.gmail_regime, settings.gmail_quota_per_minute)
    limit = table.per_user_per_minute * settings.gmail_quota_headroom
    now = time.time()
    out = []
    for account_id, email in accounts:
        state = budget.snapshot(f"account:{account_id}")
        paused = datetime.fromtimestamp(state.paused_until, UTC) if state.paused_until > now else None
        out.append(QuotaUse(int(account_id), str(email), limit, state.used_last_minute, state.tokens,
                            budget.capacity, state.rate_factor, paused))
    return out


def account_states(engine: Engine) -> list[tuple[str, str, str | None]]:
    """(email, status, reason) of accounts that are not active (needs reauth, paused)."""
    with transaction(engine) as s:
        rows = s.execute(text("SELECT email, status, status_reason FROM accounts WHERE status <> 'active' "
                              "ORDER BY email")).all()
    return [(str(e), str(st), r) for e, st, r in rows]


def running_runs(engine: Engine) -> int:
    with transaction(engine) as s:
        return int(s.execute(text("SELECT count(*) FROM sync_runs WHERE status = 'running'")).scalar_one())


# ---------------------------------------------------------------- the snapshot


@dataclass(slots=True)
class Snapshot:
    queues: dict[str, int] | None = None
    unacked: int | None = None
    stage_messages: dict[str, int] | None = None
    stage_rates: dict[str, float] | None = None
    latencies: list[TaskLatency] | None = None
    task_errors: dict[tuple[str, str], int] | None = None
    failures: list[FailureGroup] | None = None
    recent_failures: list[FailureGroup] | None = None
    breakers: list[BreakerState] | None = None
    quota: list[QuotaUse] | None = None
    inactive_accounts: list[tuple[str, str, str | None]] | None = None
    workers: list[WorkerSeen] | None = None
    runs_running: int | None = None
    stuck: list[StuckRun] | None = None
    errors: dict[str, str] = field(default_factory=dict)  # part -> why it could not be read


def collect(engine: Engine, settings: Settings, store: MetricsStore | None,
            queue_depths: Callable[[], dict[str, int]] | None = None,
            unacked: Callable[[], int] | None = None, *, recent_hours: float = 24.0) -> Snapshot:
    """Read everything once. A part that cannot be read (Redis down, say) is left None and named in
    `errors`; the others are still reported."""
    snap = Snapshot()

    def part(name: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except Exception as exc:  # one unreadable source must not blank the whole page
            log.warning("metrics: %s could not be read: %s", name, exc)
            snap.errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            return None

    # One quick ping first: the breaker and quota readers ride out a Redis restart by retrying for ~25 s
    # (pipeline.resilience.shared_redis), which would stall a scrape; with Redis down they are skipped.
    redis_up = store is None or part("redis", store.client.ping) is not None
    shared_state_up = redis_up or shared_redis_url(settings) is None  # breakers and quota may be in Postgres
    if queue_depths is not None:
        snap.queues = part("queues", queue_depths)
    if unacked is not None:
        snap.unacked = part("unacked", unacked)
    if store is not None and redis_up:
        snap.stage_messages = part("stage_messages", store.stage_totals)
        snap.stage_rates = part("stage_rates", store.stage_rates)
        snap.latencies = part("latencies", store.latencies)
        snap.task_errors = part("task_errors", store.task_errors)
        snap.workers = part("workers", store.workers)
    snap.failures = part("failures", lambda: failure_counts(engine))
    snap.recent_failures = part("recent_failures", lambda: failure_counts(engine, recent_hours))
    if shared_state_up:
        snap.breakers = part("breakers", lambda: breaker_states(settings, engine))
        snap.quota = part("quota", lambda: quota_use(engine, settings))
    snap.inactive_accounts = part("accounts", lambda: account_states(engine))
    snap.runs_running = part("runs", lambda: running_runs(engine))
    snap.stuck = part("stuck_runs", lambda: stuck_runs(engine, settings))
    return snap


# ---------------------------------------------------------------- Prometheus text


class _SnapshotCollector:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snap)


def render(snap: Snapshot) -> tuple[bytes, str]:
    """The snapshot in Prometheus' text format: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE


def families(snap: Snapshot) -> Iterable[Metric]:
    if snap.queues is not None:
        g = GaugeMetricFamily("mailpipe_queue_depth", "Messages waiting in a broker queue (all priorities).",
                              labels=["queue"])
        for queue, n in sorted(snap.queues.items()):
            g.add_metric([queue], n)
        yield g
    if snap.unacked is not None:
        yield GaugeMetricFamily("mailpipe_broker_unacked_messages",
                                "Messages delivered to workers and not yet acknowledged (reserved, or waiting "
                                "for their countdown), all queues.", value=snap.unacked)
    if snap.stage_messages is not None:
        c = CounterMetricFamily("mailpipe_stage_messages", "Messages through each stage (windows completed).",
                                labels=["stage"])
        for stage in STAGES:
            c.add_metric([stage], snap.stage_messages.get(stage, 0))
        yield c
    if snap.stage_rates is not None:
        g = GaugeMetricFamily("mailpipe_stage_messages_per_second",
                              "Messages per second through each stage over the last full minute.", labels=["stage"])
        for stage in STAGES:
            g.add_metric([stage], snap.stage_rates.get(stage, 0.0))
        yield g
    if snap.latencies is not None:
        h = HistogramMetricFamily("mailpipe_task_latency_seconds",
                                  "Wall seconds from a task's start to its end (each attempt).", labels=["task"])
        states = CounterMetricFamily("mailpipe_tasks", "Task attempts by how they ended.", labels=["task", "state"])
        for lat in snap.latencies:
            h.add_metric([lat.task], lat.cumulative(), lat.sum_seconds)
            for state, n in sorted(lat.states.items()):
                states.add_metric([lat.task, state], n)
        yield h
        yield states
    if snap.task_errors is not None:
        c = CounterMetricFamily("mailpipe_task_errors", "Tasks that raised, by task and error class.",
                                labels=["task", "error_class"])
        for (task, error_class), n in sorted(snap.task_errors.items()):
            c.add_metric([task, error_class], n)
        yield c
    if snap.failures is not None:
        g = GaugeMetricFamily("mailpipe_failures", "Recorded failures (messages or window stages) by stage and class.",
                              labels=["stage", "error_class"])
        for f in snap.failures:
            g.add_metric([f.stage, f.error_class], f.count)
        yield g
    if snap.breakers is not None:
        current = GaugeMetricFamily("mailpipe_breaker_state", "Circuit breaker state (1 for the current one).",
                                  labels=["breaker", "state"])
        fails = GaugeMetricFamily("mailpipe_breaker_failures", "Consecutive failures a breaker has counted.",
                                  labels=["breaker"])
        wait = GaugeMetricFamily("mailpipe_breaker_retry_after_seconds",
                                 "Seconds until an open breaker lets a trial call through.", labels=["breaker"])
        for b in snap.breakers:
            for name in BREAKER_STATES:
                current.add_metric([b.name, name], 1.0 if b.state == name else 0.0)
            fails.add_metric([b.name], b.failures)
            wait.add_metric([b.name], b.retry_after)
        yield from (current, fails, wait)
    if snap.quota is not None:
        limit = GaugeMetricFamily("mailpipe_gmail_quota_limit_units_per_minute",
                                  "Gmail units per minute mailpipe paces the account to.", labels=["account"])
        used = GaugeMetricFamily("mailpipe_gmail_quota_used_units", "Gmail units taken in the last 60 seconds.",
                                 labels=["account"])
        tokens = GaugeMetricFamily("mailpipe_gmail_quota_tokens", "Units the account's bucket could spend now.",
                                   labels=["account"])
        capacity = GaugeMetricFamily("mailpipe_gmail_quota_capacity_units", "The account's bucket size (burst).",
                                     labels=["account"])
        factor = GaugeMetricFamily("mailpipe_gmail_quota_rate_factor",
                                   "Share of the rate in force (below 1 after rate limits, AIMD).", labels=["account"])
        paused = GaugeMetricFamily("mailpipe_gmail_paused_seconds", "Seconds left of a rate-limit pause.",
                                   labels=["account"])
        now = time.time()
        for q in snap.quota:
            limit.add_metric([q.account], q.limit_per_minute)
            if q.used_last_minute is not None:
                used.add_metric([q.account], q.used_last_minute)
            tokens.add_metric([q.account], q.tokens)
            capacity.add_metric([q.account], q.capacity)
            factor.add_metric([q.account], q.rate_factor)
            paused.add_metric([q.account], max(0.0, q.paused_until.timestamp() - now) if q.paused_until else 0.0)
        yield from (limit, used, tokens, capacity, factor, paused)
    if snap.workers is not None:
        rss = GaugeMetricFamily("mailpipe_worker_rss_bytes", "Resident memory of a worker's processes together.",
                                labels=["worker"])
        biggest = GaugeMetricFamily("mailpipe_worker_max_process_rss_bytes",
                                    "Resident memory of a worker's largest process.", labels=["worker"])
        procs = GaugeMetricFamily("mailpipe_worker_processes", "Processes of a worker that reported their memory.",
                                  labels=["worker"])
        for w in snap.workers:
            rss.add_metric([w.worker], w.rss_bytes)
            biggest.add_metric([w.worker], w.max_process_rss_bytes)
            procs.add_metric([w.worker], w.processes)
        yield from (rss, biggest, procs)
    if snap.runs_running is not None:
        yield GaugeMetricFamily("mailpipe_runs_running", "Runs (imports, syncs) in progress.", value=snap.runs_running)
    if snap.stuck is not None:
        yield GaugeMetricFamily("mailpipe_runs_stuck", "Running runs whose driver is gone or whose windows stalled.",
                                value=len(snap.stuck))
    errors = GaugeMetricFamily("mailpipe_metrics_errors", "1 for each part of these metrics that could not be read.",
                               labels=["part"])
    for name in sorted(snap.errors):
        errors.add_metric([name], 1.0)
    yield errors


# ---------------------------------------------------------------- for `mailpipe status --json`


def as_status(snap: Snapshot) -> dict[str, Any]:
    """The operational part of `mailpipe status`: plain JSON types, one key per part (None: not readable)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    def groups(items: list[FailureGroup] | None) -> list[dict[str, Any]] | None:
        if items is None:
            return None
        return [{**asdict(f), "last_at": iso(f.last_at)} for f in items]

    quota = None if snap.quota is None else [
        {"account": q.account, "limit_per_minute": q.limit_per_minute,
         "used_last_minute": None if q.used_last_minute is None else round(q.used_last_minute, 1),
         "tokens": round(q.tokens, 1), "capacity": q.capacity, "rate_factor": round(q.rate_factor, 4),
         "paused_until": iso(q.paused_until)}
        for q in snap.quota
    ]
    paused: list[dict[str, Any]] | None = None
    if snap.quota is not None or snap.inactive_accounts is not None:
        # A 429 pauses an account until a known time; an account waiting on its user has none.
        paused = [{"account": q.account, "reason": "Gmail rate limit", "resumes_at": iso(q.paused_until)}
                  for q in snap.quota or [] if q.paused_until]
        paused += [{"account": e, "reason": f"{st}: {r}" if r else st, "resumes_at": None}
                   for e, st, r in snap.inactive_accounts or []]
    return {
        "queues": snap.queues,
        "unacked": snap.unacked,
        "stage_rates": None if snap.stage_rates is None else {k: round(v, 2) for k, v in snap.stage_rates.items()},
        "paused_accounts": paused,
        "quota": quota,
        "recent_failures": groups(snap.recent_failures),
        "workers": None if snap.workers is None else [asdict(w) for w in snap.workers],
        "runs_running": snap.runs_running,
        "stuck_runs": None if snap.stuck is None else [r.as_dict() for r in snap.stuck],
        "unreadable": snap.errors,
    }


__all__ = [
    "LATENCY_BUCKETS",
    "FailureGroup",
    "MetricsStore",
    "QuotaUse",
    "Snapshot",
    "TaskLatency",
    "WorkerSeen",
    "as_status",
    "collect",
    "failure_counts",
    "families",
    "quota_use",
    "redis_queue_depths",
    "redis_unacked",
    "render",
    "sql_queue_depths",
]
