"""Shared by the backfill and pipeline scenarios: `mailpipe import FILE --json` through the real CLI, timed.

The CLI runs as a subprocess on a fresh MAILPIPE_HOME (every other MAILPIPE_ setting of this process
dropped), so it starts its own embedded PostgreSQL, broker (kombu's SQLAlchemy transport on it) and
worker pool, exactly as a user's first import does. What it cost is read on the way: the wall clock
of the whole command, the run's own seconds (its summary: first window read to last stage done), the
CPU of the CLI with its workers (reaped children, from this process's rusage) and of PostgreSQL
(sampled, it is a daemon), and the machine's busy share and load average around it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.cpu import postmaster_pid, tree_cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "me@example.com"


def load_average() -> float:
    """The 1-minute load average, rounded (what the reports print next to each figure)."""
    return round(os.getloadavg()[0], 2)


def cli_env(home: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any MAILPIPE_ setting, plus MAILPIPE_HOME and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update({"MAILPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    env.update({f"MAILPIPE_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class CliImport:
    wall_seconds: float  # the whole command: PostgreSQL start, migrations, workers, the run, shutdown
    run_seconds: float  # the run alone (the summary's `seconds`)
    summary: dict[str, Any]
    returncode: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # "cli and workers", "postgres"
    machine_busy: float = 0.0  # share of all cores busy over the command, every process on the machine
    load_before: float = 0.0
    load_after: float = 0.0
    # From the worker log at INFO (timeline=True): seconds from the command's start to the pool being
    # ready, to its first task and its last task's end, and task seconds per task name.
    timeline: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return int(self.summary.get("new_messages", 0)) + int(self.summary.get("duplicates", 0))


def _sample_postgres(pgdata: Path, stop: threading.Event, last: dict[str, float]) -> None:
    while not stop.is_set():
        pids = [p for p in postmaster_pid(pgdata) if p > 0]  # negative while initdb runs single-user
        try:
            value = tree_cpu_seconds(pids) if pids else 0.0
        except (psutil.Error, ValueError):
            value = 0.0
        last["postgres"] = max(last.get("postgres", 0.0), value)
        stop.wait(0.5)


def run_cli_import(mbox: Path, home: Path, *, account: str = ACCOUNT, timeout: float | None = None,
                   timeline: bool = False, standing: subprocess.Popen[bytes] | None = None,
                   **settings: str) -> CliImport:
    """Import `mbox` through `python -m tasks.cli import FILE --json` on the fresh `home`; raise if it failed.

    timeline: run the pool at INFO and read from its log when it was ready and when tasks ran.
    standing: the `mailpipe worker` running on `home` (standing_worker()), whose pool does the work;
    its CPU over the import is counted with the CLI's."""
    if timeline:
        settings = {**settings, "worker_log_level": "INFO"}
    env = cli_env(home, **settings)
    started_at = datetime.now()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = psutil.cpu_times()
    load_before = load_average()
    standing_cpu = tree_cpu_seconds([standing.pid]) if standing else 0.0
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "import", str(mbox), "--account", account, "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stop, last = threading.Event(), {"postgres": 0.0}
    sampler = threading.Thread(target=_sample_postgres, args=(home / "pgdata", stop, last), daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"the import of {mbox} did not end within {timeout} s") from None
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - started
    busy1 = psutil.cpu_times()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        summary = json.loads(out)
    except ValueError:
        log = home / "logs" / "worker.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"import of {mbox} failed ({proc.returncode}): {err[-3000:]}\n{tail}") from None
    cli_cpu = ((after_children.ru_utime - before_children.ru_utime)
               + (after_children.ru_stime - before_children.ru_stime))
    if standing:
        cli_cpu += tree_cpu_seconds([standing.pid]) - standing_cpu
    idle0 = busy0.idle + getattr(busy0, "iowait", 0.0)
    idle1 = busy1.idle + getattr(busy1, "iowait", 0.0)
    total = sum(busy1) - sum(busy0)
    machine_busy = ((sum(busy1) - idle1) - (sum(busy0) - idle0)) / total if total > 0 else 0.0
    return CliImport(
        wall_seconds=round(wall, 2), run_seconds=float(summary.get("seconds", 0.0)), summary=summary,
        returncode=proc.returncode,
        cpu_seconds={"cli and workers": round(cli_cpu, 1), "postgres": round(last["postgres"], 1)},
        machine_busy=round(machine_busy, 3), load_before=load_before, load_after=load_average(),
        timeline=worker_timeline(home / "logs" / "worker.log", started_at) if timeline else {},
    )


@contextmanager
def standing_worker(home: Path, *, timeout: float = 180.0, **settings: str) -> Iterator[subprocess.Popen[bytes]]:
    """`mailpipe worker` on `home` (at INFO), its pool ready before the block runs, stopped after it."""
    log = home / "logs" / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    env = cli_env(home, **{**settings, "worker_log_level": "INFO"})
    with (home / "logs" / "standing.log").open("ab") as own_log:
        proc = subprocess.Popen([sys.executable, "-m", "tasks.cli", "worker"], cwd=ROOT, env=env,
                                stdout=own_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not (log.exists() and b" ready." in log.read_bytes()[offset:]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailpipe worker on {home} not ready (exit {proc.poll()}); see {log}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()  # the CLI's SIGTERM: a warm shutdown of its pool
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]+\] (.*)$")
_SUCCEEDED = re.compile(r"Task (mailpipe\.\w+)\[[^\]]+\] succeeded in ([0-9.]+)s")


def worker_timeline(log: Path, started_at: datetime) -> dict[str, Any]:
    """When the pool was ready, its first task received and its last task ended (seconds after
    `started_at`), and the seconds its tasks took per task name, from a worker log at INFO."""
    ready = first = last = None
    per_task: dict[str, float] = {}
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        at = (datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") - started_at).total_seconds()
        message = m.group(2)
        if ready is None and message.endswith(" ready."):
            ready = at
        elif first is None and message.startswith("Task ") and message.endswith(" received"):
            first = at
        done = _SUCCEEDED.search(message)
        if done:
            last = at
            per_task[done.group(1)] = per_task.get(done.group(1), 0.0) + float(done.group(2))
    out: dict[str, Any] = {"ready_after": ready, "first_task_after": first, "last_task_after": last,
                           "task_seconds": {k: round(v, 2) for k, v in sorted(per_task.items())}}
    if first is not None and last is not None:
        out["tasks_span"] = round(last - first, 2)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


def worker_log_errors(home: Path, patterns: tuple[str, ...]) -> dict[str, int]:
    """How many lines of the CLI's worker log mention each pattern (case-insensitive)."""
    log = home / "logs" / "worker.log"
    text = log.read_text(errors="replace").lower() if log.exists() else ""
    return {p: sum(1 for line in text.splitlines() if p.lower() in line) for p in patterns}
