"""The beat: its schedule and scheduler follow the settings, and a real `celery -A tasks beat` (RedBeat on
the test Redis) has real workers sync a Gmail account from the project's Gmail server, on schedule; a
second beat with the same lock stays silent until the first one stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.accounts import connect_account
from pipeline.credentials import OAuthGrant, TokenCipher
from pipeline.metrics import MetricsStore
from pipeline.resilience.breakers import REDIS_PREFIX as BREAKER_PREFIX
from pipeline.settings import Settings
from pipeline.testing.gmail_mailbox import FakeMailbox
from pipeline.testing.gmail_server import Faults, GmailServer, QuotaLedger
from tasks.beat import beat_schedule
from tasks.config import celery_config
from tests.conftest import ROOT, CeleryProcess, celery_worker

EMAIL = "me@example.com"
DUE = "Sending due task gmail-sync (mailpipe.schedule_syncs)"


def test_schedule_and_scheduler_follow_the_settings() -> None:
    redis_broker = celery_config(Settings(broker_url="redis://r:6379/0", beat_key_prefix="mp:beat:"), "postgresql://d")
    assert redis_broker["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert (redis_broker["redbeat_redis_url"], redis_broker["redbeat_key_prefix"]) == ("redis://r:6379/0", "mp:beat:")
    embedded = celery_config(Settings(broker_url=None), "postgresql://d")
    assert "beat_scheduler" not in embedded  # Celery's own scheduler: the SQLAlchemy broker has no lock to share

    schedule = beat_schedule(Settings(gmail_sync_interval_seconds=600, watchdog_seconds=30))
    assert set(schedule) == {"gmail-sync", "watchdog", "retention", "reconcile-counters", "enrichment-sweep"}
    assert schedule["gmail-sync"] == {"task": "mailpipe.schedule_syncs", "schedule": 600,
                                      "options": {"expires": 600}}
    assert all(e["options"]["expires"] == e["schedule"] for e in schedule.values())  # a stale run is dropped
    pushed = beat_schedule(Settings(gmail_push_topic="projects/p/topics/t", gmail_sync_interval_seconds=0))
    assert "renew-watches" in pushed and "gmail-sync" not in pushed
    assert pushed["renew-watches"]["schedule"] == 86_400


@pytest.fixture
def gmail(gmail_server: GmailServer, engine: Engine, redis_url: str) -> Iterator[GmailServer]:
    gmail_server.mailboxes = {EMAIL: FakeMailbox.from_generated(EMAIL, 20, seed=11)}
    gmail_server.faults = Faults()
    gmail_server.quota = QuotaLedger(None)
    gmail_server.reset_stats()
    client = redis.Redis.from_url(redis_url)
    for pattern in ("mailpipe:quota:*", f"{BREAKER_PREFIX}*"):
        for key in client.scan_iter(pattern):
            client.delete(key)  # no pause or open breaker left by another test
    client.close()
    yield gmail_server


def _runs(engine: Engine) -> list[tuple[int, str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT r.id, r.mode, r.status, coalesce(sum(w.new_messages), 0) FROM sync_runs r "
                                 "LEFT JOIN windows w ON w.run_id = r.id GROUP BY r.id ORDER BY r.id")).all()
    return [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def _beat_health(env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, "-m", "tasks.health", "beat"], cwd=ROOT, env={**os.environ, **env},
                          timeout=30).returncode


def _quiet(engine: Engine) -> bool:
    """No run going and no sync queued: the last scheduled rounds are over."""
    time.sleep(1.5)  # a sync sent with a jitter countdown may not have started yet
    return not _requested(engine) and all(r[2] != "running" for r in _runs(engine))


def _requested(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM sync_runs WHERE status = 'queued'")).scalar())


def test_the_poll_leaves_accounts_whose_sync_is_running_to_it(engine: Engine) -> None:
    from pipeline.push import accounts_to_poll
    from pipeline.runs import begin_run, ensure_account

    idle = ensure_account(engine, "idle@example.com", [], kind="gmail")
    busy = ensure_account(engine, "busy@example.com", [], kind="gmail")
    silent = ensure_account(engine, "silent@example.com", [], kind="gmail")
    ensure_account(engine, "mbox@example.com", [])  # not a Gmail account: never polled
    begin_run(engine, busy, "incremental", "gmail", stale_seconds=120)
    begin_run(engine, silent, "full", "gmail", stale_seconds=120)
    with engine.begin() as conn:  # its driver went quiet: the poll's sync will take the run over
        conn.execute(text("UPDATE sync_runs SET heartbeat_at = now() - interval '10 min' WHERE account_id = :a"),
                     {"a": silent})
    assert accounts_to_poll(engine, busy_seconds=120) == ([idle, silent], [busy])


def _wait(what: str, check: object, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in logs if p.exists())
            raise AssertionError(f"{what} within {timeout} s\n{tails}")
        time.sleep(0.3)


def test_a_real_beat_syncs_gmail_on_schedule_and_a_second_beat_waits(
        gmail: GmailServer, engine: Engine, mailpipe_env: dict[str, str], redis_url: str, redis_prefix: str,
        tmp_path: Path) -> None:
    grant = OAuthGrant(refresh_token=gmail.issue_refresh_token(EMAIL), client_id="cid", client_secret="secret",
                       token_uri=gmail.token_uri)
    account = connect_account(engine, TokenCipher.from_settings(Settings()), EMAIL, grant)
    env = {**mailpipe_env, "MAILPIPE_GMAIL_SYNC_INTERVAL_SECONDS": "3", "MAILPIPE_GMAIL_SYNC_JITTER_SECONDS": "1",
           "MAILPIPE_BEAT_KEY_PREFIX": f"{redis_prefix}beat:", "MAILPIPE_METRICS_KEY_PREFIX": f"{redis_prefix}m:",
           "MAILPIPE_EMBEDDER": "none"}
    logs = {n: tmp_path / f"{n}.log" for n in ("stages", "sync", "beat-a", "beat-b")}
    stages = celery_worker(env, logs["stages"], name="beat-stages")
    syncs = CeleryProcess(["worker", "-Q", "sync", "-P", "threads", "-c", "2", "-l", "INFO", "-n",
                           f"beat-sync-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                          env, logs["sync"], ready="ready.")
    beat_a = CeleryProcess(["beat", "-l", "INFO"], env, logs["beat-a"], ready="beat: Acquired lock")
    # `mailpipe beat` (it becomes `celery -A tasks beat`). Ready when started: it then waits for the lock,
    # which it must not get while beat A holds it.
    beat_b = CeleryProcess(["beat"], env, logs["beat-b"], ready="beat: Starting", program=("-m", "tasks.cli"))
    every = list(logs.values())
    try:
        stages.start()
        syncs.start()
        beat_a.start()
        # Nobody calls sync: the beat's entry fans out a sync of the account, a real worker runs it.
        _wait("a scheduled full sync finished",
              lambda: any(r[1] == "full" and r[2] == "done" for r in _runs(engine)), 60, every)
        full = next(r for r in _runs(engine) if r[1] == "full")
        assert full[3] == 20
        assert _beat_health(env) == 0  # the container healthcheck sees the lock held

        # New mail arrives; the next rounds (every 3 s) sync it incrementally, still with no one asking.
        box = gmail.mailbox(EMAIL)
        added = box.add_raw(b"From: Ann <ann@example.org>\r\nTo: me@example.com\r\nSubject: scheduled\r\n"
                            b"Message-ID: <beat-1@example.org>\r\nDate: Mon, 1 Dec 2025 10:00:00 +0000\r\n\r\nhi\r\n")
        _wait("the new message synced by a scheduled incremental sync",
              lambda: any(r[1] == "incremental" and r[2] == "done" and r[3] == 1 for r in _runs(engine)), 30, every)
        with engine.connect() as conn:
            held = conn.execute(text("SELECT count(*) FROM messages WHERE account_id = :a"), {"a": account}).scalar()
            assert conn.execute(text("SELECT count(*) FROM messages WHERE gmail_id = :g"), {"g": added}).scalar() == 1
        assert held == 21
        assert all(r[2] == "done" for r in _runs(engine)[:-1])  # every earlier run finished: none overlapped

        # A second beat on the same schedule: it starts and waits on the lock, sending nothing.
        beat_b.start()
        assert beat_b.proc and "celery" in psutil.Process(beat_b.proc.pid).cmdline()  # exec'd: no parent between
        sent_by_a = logs["beat-a"].read_text().count(DUE)
        _wait("beat A's next rounds", lambda: logs["beat-a"].read_text().count(DUE) >= sent_by_a + 2, 20, every)
        b_log = logs["beat-b"].read_text()
        assert DUE not in b_log and "Acquired lock" not in b_log
        # Beat A stops cleanly (releasing the lock): beat B takes over the schedule.
        beat_a.stop()
        _wait("beat B took over", lambda: DUE in logs["beat-b"].read_text(), 20, every)
        assert "beat: Acquired lock" in logs["beat-b"].read_text()
        beat_b.stop()

        # A queued sync that expires unrun gives the account back to its triggers at once.
        _wait("the last scheduled syncs ended", lambda: _quiet(engine), 20, every)
        from pipeline.push import request_sync
        from tasks.syncs import sync

        runs_before = len(_runs(engine))
        queued = request_sync(engine, account, lambda a: sync.apply_async((a,), countdown=2, expires=1))
        assert queued.status == "queued"  # due after it expires, as behind a backlog
        _wait("the expired sync released the account", lambda: not _requested(engine), 15, every)
        runs = {r[0]: r for r in _runs(engine)}
        assert len(runs) == runs_before + 1 and runs[queued.run_id][2] == "abandoned"  # dropped, not run
        assert "Discarding revoked task: mailpipe.sync" in logs["sync"].read_text()
        assert _beat_health(env) == 1  # both beats stopped cleanly: no lock
    finally:
        beat_b.stop()
        beat_a.stop()
        syncs.stop()
        stages.stop()

    # The sync workers' tasks were measured (tasks.metrics): nobody else consumes the sync queue.
    client = redis.Redis.from_url(redis_url)
    store = MetricsStore(client, f"{redis_prefix}m:")
    latencies = {lat.task: lat for lat in store.latencies()}
    client.close()
    done = sum(1 for r in _runs(engine) if r[2] == "done")  # each made by one sync task that then succeeded
    assert latencies["mailpipe.sync"].states.get("SUCCESS", 0) >= done >= 2
    assert latencies["mailpipe.schedule_syncs"].states.get("SUCCESS", 0) >= 3
