"""Hierarchy scenario: the three loads of a classic job-queue validation, on real Celery workers over Redis.

A load is R concurrent runs of W windows each: R accounts, each importing its own generated mbox of
W × S messages (S, the window size, small so that windows are many), all at once, every run driven by
the CLI's own code (`import_mbox` and its driver, one thread per run) and every window's chain
executed by real `celery worker` processes (prefork, one per phase queue) on Redis, against one
embedded PostgreSQL. Loads: 5 × 20, 10 × 50, 15 × 100 (run × windows), windows of 10 messages.

For each load, after its last run ends:

- **completion**: runs ending `done`, and windows whose five stages all ended `done` or, for embed
  with embeddings off, `skipped` (target 100%);
- **integrity** (each a count of violations, target 0): windows not finished or missing from a run's
  sequence; mbox entries held by no window or by more than one; messages created by no window item
  or by more than one, or that no item refers to; items without their message; stage marks missing
  on a message (normalized, contacts, insight); and the progress counters against the rows they
  count: each window's size/new/duplicate/failed against its items, each run's entries and
  windows_total against its windows, `run_progress` (what `mailpipe status` and the CLI show) against
  the rows, each thread's message_count against its messages, and the per-account counts `mailpipe
  status` shows (messages, threads, contacts, chunks, insights, failures: kept by triggers as deltas,
  `pipeline.counts`) against `count(*)`;
- **lock and serialization errors**: lines of the workers' logs naming a deadlock, a serialization
  failure, a lock timeout or a statement timeout, and failure rows whose reason does (target 0);
- **throughput**: mbox entries per second over the load (first run started to last run done), and
  its scaling factor against the first load.

    python -m bench hierarchy [--loads 5x20 10x50 15x100] [--window-size 10] [--report docs/PERFORMANCE.md]

Embeddings are off (MAILPIPE_EMBEDDER=none): this measures the queue and the state machine, not the model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.cli_import import load_average
from bench.generate import generate_mbox

BROKER = os.environ.get("MAILPIPE_BENCH_REDIS", "redis://127.0.0.1:6379/5")
DEFAULT_LOADS = ((5, 20), (10, 50), (15, 100))
LOCK_PATTERNS = (
    "deadlock detected",
    "could not serialize",
    "serializationfailure",
    "deadlockdetected",
    "lock timeout",
    "locknotavailable",
    "could not obtain lock",
    "canceling statement due to statement timeout",
)
# What the embed stage ends as when embeddings are off; every other stage must be done.
OK_STATES = {"ingest": ("done",), "normalize": ("done",), "contacts": ("done",), "embed": ("done", "skipped"),
             "insight": ("done",)}


@dataclass
class Integrity:
    """Violations per check (0 everywhere is a pass)."""

    checks: dict[str, int]

    @property
    def violations(self) -> int:
        return sum(self.checks.values())

    def failed(self) -> dict[str, int]:
        return {k: v for k, v in self.checks.items() if v}


@dataclass
class LoadResult:
    runs: int
    windows_per_run: int
    window_size: int
    entries: int
    seconds: float
    runs_done: int
    windows: int
    windows_complete: int
    integrity: dict[str, int]
    lock_errors_in_logs: dict[str, int]
    lock_failure_rows: int
    failure_rows: dict[str, int]  # by error class
    retries_in_logs: int
    load_before: float
    load_after: float
    run_ids: list[int] = field(default_factory=list)
    cpu: dict[str, Any] = field(default_factory=dict)  # bench.cpu figures over the load, when measured

    @property
    def messages_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds else 0.0

    @property
    def completion(self) -> float:
        return self.windows_complete / self.windows if self.windows else 0.0


# ---------------------------------------------------------------- running a load


def run_load(engine: Engine, runs: int, windows: int, window_size: int, workdir: Path, *,
             dispatch: Callable[[int], None], windows_in_flight: int = 256, prefix: str = "load",
             seed: int = 1, log_paths: Sequence[Path] = (), timeout: float = 3600.0,
             on_loaded: Callable[[], None] | None = None, log: Callable[[str], None] = print) -> LoadResult:
    """R concurrent imports of W windows of S messages each, through `dispatch`; checked once all end.

    `on_loaded` is called as soon as the last run ends, before the checks (to stop a CPU meter)."""
    from pipeline.importing import import_mbox
    from pipeline.settings import Settings

    settings = Settings(window_size=window_size, windows_in_flight=min(windows_in_flight, 256))
    size = windows * window_size
    jobs: list[tuple[str, Path]] = []
    for i in range(runs):
        account = f"{prefix}-r{i}@hierarchy.invalid"
        mbox = workdir / f"{prefix}-r{i}.mbox"
        generate_mbox(mbox, size, seed=seed * 1000 + i, account=account)
        jobs.append((account, mbox))
    log_marks = {p: (p.stat().st_size if p.exists() else 0) for p in log_paths}
    run_ids: dict[str, int] = {}
    errors: list[BaseException] = []

    def one(account: str, mbox: Path) -> None:
        try:
            summary = import_mbox(engine, settings, mbox, account, dispatch)
            run_ids[account] = summary.run_id
        except BaseException as exc:  # reported after every thread ends
            errors.append(exc)

    load_before = load_average()
    started = time.monotonic()
    threads = [threading.Thread(target=one, args=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, timeout - (time.monotonic() - started)))
    seconds = time.monotonic() - started
    if on_loaded is not None:
        on_loaded()
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"{prefix}: runs still going after {timeout:g} s")
    if errors:
        raise errors[0]
    ids = [run_ids[a] for a, _ in jobs]
    entries = sum(_entries(engine, r) for r in ids)
    integrity = check_integrity(engine, ids)
    with engine.connect() as conn:
        runs_done = int(conn.execute(text("SELECT count(*) FROM sync_runs WHERE id = ANY(:ids) AND status = 'done'"),
                                     {"ids": ids}).scalar_one())
        total, complete = conn.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE " + " AND ".join(
                f"{s} IN ({', '.join(repr(v) for v in ok)})" for s, ok in OK_STATES.items())
            + ") FROM windows WHERE run_id = ANY(:ids)"), {"ids": ids}).one()
        failures = {str(k): int(v) for k, v in conn.execute(text(
            "SELECT error_class, count(*) FROM failures WHERE run_id = ANY(:ids) GROUP BY error_class"),
            {"ids": ids})}
    in_logs, retries = scan_logs(log_marks)
    return LoadResult(
        runs=runs, windows_per_run=windows, window_size=window_size, entries=entries, seconds=round(seconds, 2),
        runs_done=runs_done, windows=int(total), windows_complete=int(complete), integrity=integrity.checks,
        lock_errors_in_logs=in_logs, lock_failure_rows=lock_failure_rows(engine, ids), failure_rows=failures,
        retries_in_logs=retries, load_before=load_before, load_after=load_average(), run_ids=ids,
    )


def _entries(engine: Engine, run_id: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT entries FROM sync_runs WHERE id = :r"), {"r": run_id}).scalar_one())


# ---------------------------------------------------------------- checks


# Each query counts violations over the runs in :ids.
INTEGRITY_SQL: dict[str, str] = {
    "windows not finished": "SELECT count(*) FROM windows WHERE run_id = ANY(:ids) AND NOT finished",
    "window sequence gaps": (
        "SELECT count(*) FROM (SELECT run_id, count(*) AS n, max(seq) + 1 AS top, min(seq) AS bottom "
        "FROM windows WHERE run_id = ANY(:ids) GROUP BY run_id) w WHERE n <> top OR bottom <> 0"),
    "runs whose windows_total differs from their windows": (
        "SELECT count(*) FROM sync_runs r WHERE r.id = ANY(:ids) AND r.windows_total <> "
        "(SELECT count(*) FROM windows w WHERE w.run_id = r.id)"),
    "runs whose entries differ from their items": (
        "SELECT count(*) FROM sync_runs r WHERE r.id = ANY(:ids) AND r.entries <> "
        "(SELECT count(*) FROM window_items i JOIN windows w ON w.id = i.window_id WHERE w.run_id = r.id)"),
    "windows whose size differs from their items": (
        "SELECT count(*) FROM windows w WHERE w.run_id = ANY(:ids) AND w.size <> "
        "(SELECT count(*) FROM window_items i WHERE i.window_id = w.id)"),
    "windows whose new/duplicate/failed counters differ from their items": (
        "SELECT count(*) FROM windows w JOIN LATERAL (SELECT "
        "count(*) FILTER (WHERE outcome = 'new') AS new, count(*) FILTER (WHERE outcome = 'duplicate') AS dup, "
        "count(*) FILTER (WHERE outcome = 'failed') AS failed FROM window_items i WHERE i.window_id = w.id) c "
        "ON true WHERE w.run_id = ANY(:ids) AND "
        "(w.new_messages <> c.new OR w.duplicates <> c.dup OR w.failed <> c.failed)"),
    "mbox entries held by more than one window": (
        "SELECT count(*) FROM (SELECT w.run_id, i.source_ref FROM window_items i JOIN windows w ON w.id = i.window_id "
        "WHERE w.run_id = ANY(:ids) GROUP BY w.run_id, i.source_ref HAVING count(*) > 1) d"),
    "items without an outcome or without their message": (
        "SELECT count(*) FROM window_items i JOIN windows w ON w.id = i.window_id WHERE w.run_id = ANY(:ids) AND "
        "(i.outcome IS NULL OR (i.outcome IN ('new', 'duplicate') AND i.message_id IS NULL))"),
    "messages not created by exactly one item": (
        "SELECT count(*) FROM messages m JOIN sync_runs r ON r.account_id = m.account_id AND r.id = ANY(:ids) "
        "WHERE (SELECT count(*) FROM window_items i JOIN windows w ON w.id = i.window_id "
        "       WHERE i.message_id = m.id AND i.outcome = 'new' AND w.run_id = r.id) <> 1"),
    "messages no item refers to": (
        "SELECT count(*) FROM messages m JOIN sync_runs r ON r.account_id = m.account_id AND r.id = ANY(:ids) "
        "WHERE NOT EXISTS (SELECT 1 FROM window_items i WHERE i.message_id = m.id)"),
    "messages missing a stage mark": (
        "SELECT count(*) FROM messages m JOIN sync_runs r ON r.account_id = m.account_id AND r.id = ANY(:ids) "
        "WHERE m.normalized_at IS NULL OR m.contacts_at IS NULL OR m.insight_at IS NULL"),
    "threads whose message_count differs from their messages": (
        "SELECT count(*) FROM threads t JOIN sync_runs r ON r.account_id = t.account_id AND r.id = ANY(:ids) "
        "WHERE t.message_count <> (SELECT count(*) FROM messages m WHERE m.thread_id = t.id)"),
}


def check_integrity(engine: Engine, run_ids: Sequence[int]) -> Integrity:
    """Every check's violations over these runs, the progress the CLI reports included."""
    from pipeline.runs import run_progress
    from pipeline.storage.models import STAGES

    ids = list(run_ids)
    checks: dict[str, int] = {}
    with engine.connect() as conn:
        for name, sql in INTEGRITY_SQL.items():
            checks[name] = int(conn.execute(text(sql), {"ids": ids}).scalar_one())
    # First: the figures checked below are then those of the progress cache (pipeline.progress_cache),
    # as every `status` shows them: the call that finished each run cached them, and `status` caches any
    # it has to aggregate.
    checks["status counts that differ from count(*)"] = status_count_mismatches(engine, ids)
    progress_off = 0
    for run_id in ids:
        p = run_progress(engine, run_id)
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT count(*) FILTER (WHERE i.outcome = 'new'), count(*) FILTER (WHERE i.outcome = 'duplicate'), "
                "count(DISTINCT i.source_ref) FILTER (WHERE i.outcome = 'failed'), count(*), "
                "count(DISTINCT w.id) FROM window_items i JOIN windows w ON w.id = i.window_id WHERE w.run_id = :r"),
                {"r": run_id}).one()
            messages = int(conn.execute(text("SELECT count(*) FROM messages WHERE account_id = :a"),
                                        {"a": p.account_id}).scalar_one())
        new, dup, failed, items, windows = (int(v) for v in row)
        expected = {
            "new_messages": (p.new_messages, new), "duplicates": (p.duplicates, dup),
            "failed_messages": (p.failed_messages, failed), "entries": (p.entries, items),
            "windows_total": (p.windows_total, windows), "windows_finished": (p.windows_finished, windows),
            "messages of the account": (p.new_messages, messages),
            **{f"stage_done[{s}]": (p.stage_done[s], items) for s in STAGES},
        }
        progress_off += sum(1 for shown, counted in expected.values() if shown != counted)
    checks["run progress figures that differ from the rows"] = progress_off
    return Integrity(checks)


def status_count_mismatches(engine: Engine, run_ids: Sequence[int]) -> int:
    """The (account, kind) counts `mailpipe status` shows for the runs' accounts that differ from `count(*)`."""
    from pipeline.counts import KINDS, actual_counts
    from pipeline.reports import status

    with engine.connect() as conn:
        accounts = dict(conn.execute(text(
            "SELECT DISTINCT a.email, a.id FROM accounts a JOIN sync_runs r ON r.account_id = a.id "
            "WHERE r.id = ANY(:ids)"), {"ids": list(run_ids)}).all())
        actual = actual_counts(conn)
    shown = {row["email"]: row for row in status(engine) if row["email"] in accounts}
    return sum(1 for email, account_id in accounts.items() for kind in KINDS
               if shown[email][kind] != actual.get((account_id, kind), 0))


def lock_failure_rows(engine: Engine, run_ids: Sequence[int]) -> int:
    """Failure rows of these runs whose reason names a lock or serialization error."""
    pattern = "(" + "|".join(re.escape(p) for p in LOCK_PATTERNS) + ")"
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM failures WHERE run_id = ANY(:ids) AND reason ~* :p"),
                                {"ids": list(run_ids), "p": pattern}).scalar_one())


def scan_logs(marks: dict[Path, int]) -> tuple[dict[str, int], int]:
    """Lock or serialization errors per pattern, and task retries, in what each log gained since its mark."""
    found = dict.fromkeys(LOCK_PATTERNS, 0)
    retries = 0
    for path, start in marks.items():
        if not path.exists():
            continue
        with path.open("rb") as fh:
            fh.seek(start)
            chunk = fh.read().decode("utf-8", "replace").lower()
        for line in chunk.splitlines():
            for pattern in LOCK_PATTERNS:
                if pattern in line:
                    found[pattern] += 1
            if " retry in " in line:
                retries += 1
    return {k: v for k, v in found.items() if v}, retries


# ---------------------------------------------------------------- the scenario: own Postgres, Redis, workers


def _env(home: str, url: str, broker: str) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update({"MAILPIPE_HOME": home, "MAILPIPE_DATABASE_URL": url, "MAILPIPE_BROKER_URL": broker,
                "MAILPIPE_EMBEDDER": "none", "HF_HUB_OFFLINE": "1"})
    return env


def parse_load(text_: str) -> tuple[int, int]:
    runs, _, windows = text_.lower().partition("x")
    return int(runs), int(windows)


def run_scenario(loads: Iterable[tuple[int, int]], window_size: int, *, broker: str = BROKER,
                 concurrency: int = 2, windows_in_flight: int = 256,
                 log: Callable[[str], None] = print) -> list[LoadResult]:
    import redis

    from bench.cpu import CpuMeter, pids_named, postmaster_pid
    from bench.gmail_quota import start_worker
    from pipeline.storage.db import engine_for, migrate
    from pipeline.storage.embedded import start_embedded_postgres, stop_embedded_postgres

    loads = list(loads)
    results: list[LoadResult] = []
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-hierarchy-") as tmp:
        work = Path(tmp)
        url = start_embedded_postgres(work / "pg")
        migrate(url)
        client = redis.Redis.from_url(broker)
        client.flushdb()  # this bench's own database (MAILPIPE_BENCH_REDIS): queues of an earlier run go
        client.close()
        env = _env(tmp, url, broker)
        os.environ.update(env)
        from pipeline.settings import get_settings
        from tasks import context

        get_settings.cache_clear()
        context.resolved_database_url.cache_clear()
        from tasks.chains import dispatch_window

        # Pool large enough for every run's driver thread at once (the CLI's engine serves one run).
        engine = engine_for(url, pool_size=max(5, max(r for r, _ in loads) + 2))
        # One worker per phase queue, as the README deploys them.
        workers = [start_worker(env, q, concurrency, work, name=f"hier-{q}", log_level="INFO")
                   for q in ("ingest", "normalize", "ai")]
        logs = [work / f"worker-{q}.log" for q in ("ingest", "normalize", "ai")]
        try:
            _wait_ready(logs, workers)
            for i, (runs, windows) in enumerate(loads, 1):
                log(f"load {i}: {runs} runs x {windows} windows of {window_size} messages")
                meter = CpuMeter({
                    "workers": lambda: [w.pid for w in workers],
                    "postgres": lambda: postmaster_pid(work / "pg"),
                    "redis (shared)": lambda: pids_named("redis-server"),
                }, this_process="drivers (this process)")
                cpu: list[dict[str, Any]] = []

                def loaded(m: CpuMeter = meter, c: list[dict[str, Any]] = cpu) -> None:
                    c.append(m.stop().as_dict())

                meter.start()
                result = run_load(engine, runs, windows, window_size, work, dispatch=dispatch_window,
                                  windows_in_flight=windows_in_flight, prefix=f"l{i}", log_paths=logs,
                                  on_loaded=loaded, log=log)
                result.cpu = cpu[0] if cpu else {}
                log(f"  {result.entries} messages in {result.seconds} s ({result.messages_per_second:.1f}/s); "
                    f"runs done {result.runs_done}/{runs}; windows complete {result.windows_complete}/"
                    f"{result.windows}; integrity violations {sum(result.integrity.values())}; lock errors "
                    f"{sum(result.lock_errors_in_logs.values())} in logs, {result.lock_failure_rows} rows")
                results.append(result)
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(60)
            engine.dispose()
            stop_embedded_postgres(work / "pg")
    return results


def _wait_ready(logs: Sequence[Path], workers: Sequence[Any], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        texts = [p.read_text(errors="replace") if p.exists() else "" for p in logs]
        if all(" ready." in t for t in texts):
            return
        if any(w.poll() is not None for w in workers) or time.monotonic() > deadline:
            raise RuntimeError("the workers did not start: " + " | ".join(t[-1500:] for t in texts))
        time.sleep(0.3)


def summarize(results: Sequence[LoadResult]) -> dict[str, Any]:
    base = results[0].messages_per_second if results else 0.0
    rows = []
    for r in results:
        rows.append({**asdict(r), "messages_per_second": round(r.messages_per_second, 1),
                     "completion": round(r.completion, 4),
                     "scaling": round(r.messages_per_second / base, 3) if base else None,
                     "work": round(r.windows / results[0].windows, 1) if results[0].windows else None})
    return {"loads": rows,
            "all_complete": all(r.runs_done == r.runs and r.windows_complete == r.windows for r in results),
            "integrity_violations": sum(sum(r.integrity.values()) for r in results),
            "lock_errors": sum(sum(r.lock_errors_in_logs.values()) + r.lock_failure_rows for r in results)}


HEADER = ["load (runs × windows)", "messages", "seconds", "msg/s", "scaling", "runs done", "windows complete",
          "integrity violations", "lock/serialization errors (logs, rows)", "retries", "failure rows",
          "cores used: workers, PostgreSQL, drivers, Redis (machine busy)", "load avg"]


def _cpu(cpu: dict[str, Any]) -> str:
    if not cpu:
        return ""
    seconds = max(float(cpu["seconds"]), 1e-9)
    used = cpu["cpu_seconds"]
    parts = [f"{used.get(k, 0.0) / seconds:.2f}" for k in ("workers", "postgres", "drivers (this process)",
                                                             "redis (shared)")]
    return ", ".join(parts) + f" ({100 * float(cpu['machine_busy']):.0f}%)"


def _row(r: dict[str, Any]) -> list[str]:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(r["failure_rows"].items())) or "0"
    bad = {k: v for k, v in r["integrity"].items() if v}
    return [f"{r['runs']} × {r['windows_per_run']} (×{r['work']} work)", f"{r['entries']:,}", str(r["seconds"]),
            str(r["messages_per_second"]), str(r["scaling"]), f"{r['runs_done']}/{r['runs']}",
            f"{r['windows_complete']}/{r['windows']} ({100 * r['completion']:.1f}%)",
            str(sum(r["integrity"].values())) + (f" ({bad})" if bad else ""),
            f"{sum(r['lock_errors_in_logs'].values())}, {r['lock_failure_rows']}", str(r["retries_in_logs"]),
            failures, _cpu(r.get("cpu") or {}), f"{r['load_before']} → {r['load_after']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench hierarchy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", nargs="+", default=[f"{r}x{w}" for r, w in DEFAULT_LOADS],
                        help="RUNSxWINDOWS each (default: 5x20 10x50 15x100)")
    parser.add_argument("--size", type=int, default=None,
                        help="scale every load's windows per run to this many (a quick run: --size 4)")
    parser.add_argument("--window-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2, help="processes per phase queue's worker")
    parser.add_argument("--windows-in-flight", type=int, default=256, help="per run (the driver's back-pressure)")
    parser.add_argument("--broker", default=BROKER)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="write the figures into this Markdown file")
    args = parser.parse_args(argv)
    loads = [parse_load(x) for x in args.loads]
    if args.size:
        loads = [(r, args.size) for r, _ in loads]
    log = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    results = run_scenario(loads, args.window_size, broker=args.broker, concurrency=args.concurrency,
                           windows_in_flight=args.windows_in_flight, log=log)
    data = summarize(results)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for r in data["loads"]:
            print(" | ".join(c.replace("**", "") for c in _row(r)))
        print(f"complete: {data['all_complete']}; integrity violations {data['integrity_violations']}; "
              f"lock/serialization errors {data['lock_errors']}")
    ok = data["all_complete"] and data["integrity_violations"] == 0 and data["lock_errors"] == 0
    if args.report:
        from bench.report import write_section

        command = ("python -m bench hierarchy --loads " + " ".join(f"{r}x{w}" for r, w in loads)
                   + f" --window-size {args.window_size} --concurrency {args.concurrency}")
        last = data["loads"][-1]
        verdict = (
            f"Completion {'100% in every load' if data['all_complete'] else 'NOT complete'} (target 100%); "
            f"integrity violations {data['integrity_violations']} (target 0); lock or serialization errors "
            f"{data['lock_errors']} (target 0); throughput scaling from the first load to the last "
            f"{last['scaling']} for ×{last['work']} the work. Each load: R accounts importing at once, each "
            f"its own `bench.generate` mbox of W × {args.window_size} messages through `import_mbox` (the "
            "CLI's driver, one thread per run, windows in flight up to "
            f"{args.windows_in_flight} per run), chains executed by three `celery worker` processes (one per "
            f"phase queue: ingest, normalize, ai; prefork, {args.concurrency} children each) on Redis, one "
            "embedded PostgreSQL, embeddings off. Integrity checks (violations counted by SQL over the "
            "load's runs): windows unfinished or missing from a run's sequence; an mbox entry in more than "
            "one window; a message created by no window item or by more than one, or referred to by none; "
            "an item without its outcome or message; a stage mark missing; window counters (size, new, "
            "duplicates, failed) against their items; run entries and windows_total against their windows; "
            "every figure of `run_progress` (what `mailpipe status` shows) against the rows; thread "
            "message_count against its messages; the per-account counts `mailpipe status` shows (messages, "
            "threads, contacts, chunks, insights, failures: trigger-kept deltas) against `count(*)`. "
            "Lock errors: worker log lines naming a deadlock, a serialization failure, a lock or statement "
            "timeout, and failure rows whose reason does. "
            "Retries: worker log lines `Retry in`. Scaling: messages/s of the load over the first load's."
        )
        write_section(args.report, "hierarchy", command, HEADER, [_row(r) for r in data["loads"]], verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
