"""The /metrics exposition and `mailpipe status`'s operational picture, against real Redis, Postgres and a
real worker: every series computed from shared state, with the values of the state seeded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from pipeline.metrics import KOMBU_PRIORITY_SEP, MetricsStore
from pipeline.records import RawMessage
from pipeline.resilience.breakers import REDIS_PREFIX as BREAKER_PREFIX
from pipeline.resilience.breakers import breakers_for
from pipeline.resilience.quota import budget_for
from pipeline.runs import add_window, begin_run, ensure_account, record_failure
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from tests.conftest import ROOT, CeleryProcess, delete_redis_prefix

pytestmark = pytest.mark.integration

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


@pytest.fixture
def settings(mailpipe_env: dict[str, str], redis_prefix: str) -> Settings:
    url = mailpipe_env["MAILPIPE_BROKER_URL"]
    return Settings(broker_url=url, redis_url=url, metrics_key_prefix=redis_prefix + "metrics:",
                    breaker_reset_seconds=60, gmail_regime="legacy", gmail_quota_headroom=1.0)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _outside_a_minute_boundary() -> None:
    # The quota bucket counts units per calendar minute; seed and read within one.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_exposition_has_every_series_with_the_seeded_values(engine: Engine, settings: Settings, client: redis.Redis,
                                                            redis_prefix: str, redis_url: str) -> None:
    from tasks.app import app
    from tasks.metrics import ALL_QUEUES, exposition

    # Queue depth: 3 messages at the default priority, 2 at priority 9 (kombu's "<queue>\x06\x169" list).
    queue = f"{redis_prefix}queue"
    for priority in (0, 0, 0, 9, 9):
        app.send_task("mailpipe.watchdog", queue=queue, priority=priority)
    assert client.llen(queue) == 3 and client.llen(f"{queue}{KOMBU_PRIORITY_SEP}9") == 2
    # Failures: two rate limits at ingest, one permanent at normalize.
    account = ensure_account(engine, "me@example.com", [], kind="gmail")
    run = begin_run(engine, account, "full", "test", stale_seconds=60)
    window = add_window(engine, run, 0, [RawMessage("a", b"x")])
    with transaction(engine) as s:
        for ref, stage, error_class in (("a", "ingest", "rate_limit"), ("b", "ingest", "rate_limit"),
                                        ("c", "normalize", "permanent")):
            record_failure(s, account, run, window, ref, stage, error_class, "why")
    # A breaker tripped by five transient failures.
    breaker_name = f"test-{uuid.uuid4().hex[:8]}"
    breaker = breakers_for(settings, engine).get(breaker_name)
    for _ in range(settings.breaker_fail_max):
        with pytest.raises(ConnectionError):
            breaker.call(_refused)
    # Quota: 100 units spent, then a 429 paused the account for two minutes.
    quota_key = f"account:{account}"
    client.delete(f"mailpipe:quota:{quota_key}")
    _outside_a_minute_boundary()
    budget = budget_for(settings, engine)
    budget.acquire(quota_key, 100)
    budget.pause(quota_key, time.time() + 120)
    # What workers record: a worker's processes' RSS, and an ingest task of 50 messages 15 s ago.
    store = MetricsStore(client, settings.metrics_key_prefix)
    store.publish_rss("w1@test", {11: 1000, 12: 2500})
    store.record_task("mailpipe.ingest", "SUCCESS", 0.3, stage="ingest", messages=50, now=time.time() - 15)
    try:
        body, content_type = exposition(engine, settings, client, queues=(*ALL_QUEUES, queue))
    finally:
        delete_redis_prefix(redis_url, f"{BREAKER_PREFIX}{breaker_name}")
        client.delete(f"mailpipe:quota:{quota_key}", f"_kombu.binding.{queue}")
    series = parse(body)

    assert content_type.startswith("text/plain; version=0.0.4")
    assert value(series, "mailpipe_queue_depth", queue=queue) == 5
    assert {q for (name, labels) in series if name == "mailpipe_queue_depth" for _, q in labels} >= set(ALL_QUEUES)
    assert "mailpipe_broker_unacked_messages" in {name for name, _ in series}
    assert value(series, "mailpipe_failures", stage="ingest", error_class="rate_limit") == 2
    assert value(series, "mailpipe_failures", stage="normalize", error_class="permanent") == 1
    assert value(series, "mailpipe_breaker_state", breaker=breaker_name, state="open") == 1
    assert value(series, "mailpipe_breaker_state", breaker=breaker_name, state="closed") == 0
    assert 0 < value(series, "mailpipe_breaker_retry_after_seconds", breaker=breaker_name) <= 60
    assert value(series, "mailpipe_gmail_quota_limit_units_per_minute", account="me@example.com") == 15_000
    assert value(series, "mailpipe_gmail_quota_used_units", account="me@example.com") == 100
    assert value(series, "mailpipe_gmail_quota_tokens", account="me@example.com") == 0  # a pause empties it
    assert value(series, "mailpipe_gmail_quota_capacity_units", account="me@example.com") == budget.capacity
    assert value(series, "mailpipe_gmail_quota_rate_factor", account="me@example.com") == 1
    assert 110 < value(series, "mailpipe_gmail_paused_seconds", account="me@example.com") <= 120
    assert value(series, "mailpipe_worker_rss_bytes", worker="w1@test") == 3500
    assert value(series, "mailpipe_worker_max_process_rss_bytes", worker="w1@test") == 2500
    assert value(series, "mailpipe_worker_processes", worker="w1@test") == 2
    assert value(series, "mailpipe_stage_messages_total", stage="ingest") == 50
    assert value(series, "mailpipe_stage_messages_total", stage="normalize") == 0
    assert value(series, "mailpipe_stage_messages_per_second", stage="ingest") == pytest.approx(50 / 60)
    assert value(series, "mailpipe_task_latency_seconds_bucket", task="mailpipe.ingest", le="0.25") == 0
    assert value(series, "mailpipe_task_latency_seconds_bucket", task="mailpipe.ingest", le="0.5") == 1
    assert value(series, "mailpipe_task_latency_seconds_count", task="mailpipe.ingest") == 1
    assert value(series, "mailpipe_task_latency_seconds_sum", task="mailpipe.ingest") == pytest.approx(0.3)
    assert value(series, "mailpipe_tasks_total", task="mailpipe.ingest", state="SUCCESS") == 1
    assert value(series, "mailpipe_runs_running") == 1
    assert value(series, "mailpipe_runs_stuck") == 0
    assert not [k for k in series if k[0] == "mailpipe_metrics_errors"]  # every part was readable


def _refused() -> None:
    raise ConnectionError("connection refused")


def test_a_real_worker_records_latency_errors_and_its_memory(engine: Engine, settings: Settings,
                                                            client: redis.Redis, redis_prefix: str,
                                                            mailpipe_env: dict[str, str], tmp_path: Path) -> None:
    from tasks.app import app
    from tasks.metrics import exposition

    queue = f"{redis_prefix}work"
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    worker = CeleryProcess(["worker", "-Q", queue, "-c", "1", "--pool", "prefork", "-l", "INFO", "-n", f"{name}@%h",
                            "--without-gossip", "--without-mingle"],
                           {**mailpipe_env, "MAILPIPE_METRICS_KEY_PREFIX": settings.metrics_key_prefix,
                            "MAILPIPE_EMBEDDER": "none"}, tmp_path / "worker.log", ready="ready.")
    store = MetricsStore(client, settings.metrics_key_prefix)
    worker.start()
    try:
        app.send_task("mailpipe.watchdog", queue=queue)  # a real task: succeeds
        app.send_task("mailpipe.sync", (987654,), queue=queue)  # no such account: raises
        deadline = time.monotonic() + 30
        while True:
            tasks = {lat.task: lat for lat in store.latencies()}
            seen = {w.worker: w for w in store.workers()}
            worker_name = next((w for w in seen if w.startswith(name + "@")), None)
            ended = {"mailpipe.watchdog", "mailpipe.sync"} <= set(tasks)
            if ended and worker_name and seen[worker_name].processes == 2:
                break
            assert time.monotonic() < deadline, (tasks, seen, (tmp_path / "worker.log").read_text()[-3000:])
            time.sleep(0.3)
        main = psutil.Process(worker.proc.pid if worker.proc else 0)
        measured = {p.pid: p.memory_info().rss for p in (main, *main.children())}
        series = parse(exposition(engine, settings, client, queues=(queue,))[0])
    finally:
        worker.stop()
        client.delete(f"_kombu.binding.{queue}")

    assert value(series, "mailpipe_task_latency_seconds_count", task="mailpipe.watchdog") == 1
    assert value(series, "mailpipe_task_latency_seconds_bucket", task="mailpipe.watchdog", le="+Inf") == 1
    assert 0 < value(series, "mailpipe_task_latency_seconds_sum", task="mailpipe.watchdog") < 10
    assert value(series, "mailpipe_tasks_total", task="mailpipe.watchdog", state="SUCCESS") == 1
    assert value(series, "mailpipe_tasks_total", task="mailpipe.sync", state="FAILURE") == 1
    assert value(series, "mailpipe_task_errors_total", task="mailpipe.sync", error_class="permanent") == 1
    assert value(series, "mailpipe_queue_depth", queue=queue) == 0  # both consumed
    # The worker's parent and its one pool child, each as large as the OS says (give or take what a task
    # allocated since the last report).
    reported = seen[worker_name]
    assert set(reported.pids) == set(measured)
    assert value(series, "mailpipe_worker_processes", worker=worker_name) == 2
    total = value(series, "mailpipe_worker_rss_bytes", worker=worker_name)
    assert 0.5 * sum(measured.values()) < total < 2 * sum(measured.values())
    assert total > 20 * 2**20  # a Python process with Celery loaded


def test_status_shows_the_operational_picture(engine: Engine, settings: Settings, client: redis.Redis,
                                              mailpipe_env: dict[str, str]) -> None:
    account = ensure_account(engine, "me@example.com", [], kind="gmail")
    run = begin_run(engine, account, "full", "test", stale_seconds=60)
    window = add_window(engine, run, 0, [RawMessage("a", b"x")])
    with transaction(engine) as s:
        record_failure(s, account, run, window, "gmail:1", "ingest", "gone", "deleted before it was fetched")
    with engine.begin() as conn:  # its driver went silent half an hour ago, mid-listing
        conn.execute(text("UPDATE sync_runs SET driver = 'elsewhere:1', heartbeat_at = now() - interval '30 min'"))
    quota_key = f"account:{account}"
    client.delete(f"mailpipe:quota:{quota_key}")
    budget_for(settings, engine).pause(quota_key, time.time() + 300)
    env = {**os.environ, **mailpipe_env, "MAILPIPE_METRICS_KEY_PREFIX": settings.metrics_key_prefix}
    try:
        result = subprocess.run([sys.executable, "-m", "tasks.cli", "status", "--json"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        human = subprocess.run([sys.executable, "-m", "tasks.cli", "status"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
    finally:
        client.delete(f"mailpipe:quota:{quota_key}")
    assert result.returncode == 0, result.stderr[-2000:]
    status = json.loads(result.stdout)
    assert status["accounts"][0]["email"] == "me@example.com"  # the per-account part is unchanged
    assert set(status["queues"]) == {"ingest", "normalize", "ai", "sync"}
    assert status["workers"] == []  # nothing published under this test's prefix
    assert status["stuck_runs"][0]["run_id"] == run and "gone while reading" in status["stuck_runs"][0]["reason"]
    assert status["recent_failures"] == [{"stage": "ingest", "error_class": "gone", "count": 1,
                                          "last_at": status["recent_failures"][0]["last_at"],
                                          "example": "deleted before it was fetched"}]
    (paused,) = status["paused_accounts"]
    assert paused["account"] == "me@example.com" and paused["resumes_at"]
    (quota,) = status["quota"]
    assert (quota["limit_per_minute"], quota["used_last_minute"], quota["tokens"]) == (15_000, 0, 0)
    assert status["unreadable"] == {}
    assert human.returncode == 0, human.stderr[-2000:]
    assert "queues: ingest" in human.stdout and "quota me@example.com: 0 of 15000 units" in human.stdout
    assert f"stuck: run {run} of me@example.com" in human.stderr
    assert "paused: me@example.com (Gmail rate limit) until" in human.stderr


def test_exposition_answers_at_once_when_redis_is_down(engine: Engine, mailpipe_env: dict[str, str]) -> None:
    from tasks.metrics import exposition, metrics_client

    down = "redis://127.0.0.1:1/0"  # nothing listens there
    settings = Settings(broker_url=down, redis_url=down)
    account = ensure_account(engine, "me@example.com", [], kind="gmail")
    run = begin_run(engine, account, "full", "test", stale_seconds=60)
    window = add_window(engine, run, 0, [RawMessage("a", b"x")])
    with transaction(engine) as s:
        record_failure(s, account, run, window, "a", "ingest", "transient", "why")
    started = time.monotonic()
    series = parse(exposition(engine, settings, metrics_client(down))[0])
    assert time.monotonic() - started < 5  # not the ~25 s the shared-state clients retry for
    assert value(series, "mailpipe_metrics_errors", part="redis") == 1
    assert value(series, "mailpipe_metrics_errors", part="queues") == 1
    # What PostgreSQL holds is still reported; what lives in Redis is absent, not zero.
    assert value(series, "mailpipe_failures", stage="ingest", error_class="transient") == 1
    assert value(series, "mailpipe_runs_running") == 1
    names = {name for name, _ in series}
    assert not names & {"mailpipe_queue_depth", "mailpipe_breaker_state", "mailpipe_gmail_quota_tokens",
                        "mailpipe_worker_rss_bytes", "mailpipe_task_latency_seconds_count"}
