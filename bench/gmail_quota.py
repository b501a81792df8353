"""Ingest at the quota ceiling: Gmail full syncs against the project's server enforcing a regime.

The server (its own process) holds generated mailboxes, enforces the per-user quota of the chosen
regime with per-method costs, adds latency to every HTTP request and fails a share of calls with
5xx. mailpipe syncs every account at once through its real path: the CLI's driver code, Celery
workers on Redis, the shared per-account budget, batch fetches. The server measures what was
charged; the sustained rate is the gets it served per second over the sync, as a share of the
ceiling (per-user units per minute / 60 / the cost of messages.get).

    python -m bench.gmail_quota [--regime legacy|2026] [--messages N] [--accounts K] [--report docs/PERFORMANCE.md]

Embeddings are off (MAILPIPE_EMBEDDER=none): this measures ingestion, not the model.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter, pids_named, postmaster_pid

ROOT = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("MAILPIPE_BENCH_REDIS", "redis://127.0.0.1:6379/13")
GET_COST = {"legacy": 5, "2026": 20}
PER_MINUTE = {"legacy": 15_000, "2026": 6_000}
# Per account, by default: deep enough that the downstream stages never hold ingestion back.
WINDOWS_IN_FLIGHT = 256


# ---------------------------------------------------------------- the server, in its own process


def _serve(conn: Connection, regime: str, accounts: int, messages: int, latency: float, error_rate: float) -> None:
    from pipeline.stages.ingest import identify
    from pipeline.testing.gmail_mailbox import FakeMailbox
    from pipeline.testing.gmail_server import Faults, GmailServer, QuotaRegime

    boxes = [FakeMailbox.from_generated(f"user{i}@example.com", messages, seed=100 + i) for i in range(accounts)]
    for box in boxes:  # Gmail parses its messages on its own machines, not on the cores measured here
        box.prepare_contents()
    quota = QuotaRegime.legacy() if regime == "legacy" else QuotaRegime.y2026()
    server = GmailServer({b.email: b for b in boxes}, quota=quota,
                         faults=Faults(latency=latency, error_rate=error_rate, seed=1))
    server.start()
    conn.send({"base_url": server.base_url, "token_uri": server.token_uri,
               "accounts": {b.email: server.issue_refresh_token(b.email) for b in boxes}})
    conn.recv()  # the bench says stop
    hidden = {"SPAM", "TRASH"}
    keys = {b.email: sorted({identify(b.get(i).raw)[0] for i in b.ids() if hidden.isdisjoint(b.get(i).label_ids)})
            for b in boxes}
    conn.send({"stats": {b.email: server.stats(b.email) for b in boxes}, "keys": keys})
    server.stop()


# ---------------------------------------------------------------- the run


@dataclass
class AccountResult:
    email: str
    messages: int
    missing: int
    gets_per_second: float
    ceiling_share: float
    units_per_message: float
    rate_limited: int
    injected_5xx: int
    sync_seconds: float
    token_refreshes: int = 0  # access tokens the account's clients asked for: one per client built


def ingest_processes(accounts: int) -> int:
    """The ingest worker's default concurrency. Ingest waits on the quota and the network, not the CPU:
    enough processes that one is always fetching while others write their window."""
    return max(4, min(2 * accounts, 12))


def _workers(env: dict[str, str], ingest: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    specs = [("ingest", ingest), ("normalize,ai", 2)]
    return [start_worker(env, queues, concurrency, log_dir) for queues, concurrency in specs]


def start_worker(env: dict[str, str], queues: str, concurrency: int, log_dir: Path,
                 name: str | None = None, log_level: str = "WARNING") -> subprocess.Popen[bytes]:
    """One real `celery worker` (prefork) on `queues`, in its own session, logging to log_dir."""
    log = (log_dir / f"worker-{queues.replace(',', '-')}.log").open("ab")
    node = name or f"bench-{queues}-{os.getpid()}"
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queues, "-c", str(concurrency),
             "--pool", "prefork", "-l", log_level, "-n", f"{node}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def wait_until_ready(workers: list[subprocess.Popen[bytes]], broker: str, timeout: float = 120.0) -> None:
    """Return once every worker answers a ping, its pool started.

    Standing workers are what a sync meets; a bench that started its syncs with the workers would charge
    their boot (20 processes forking on 2 cores: the first get came ~4.5 s after the listing) to the
    accounts' rates, and charge it more the more workers the accounts need."""
    from kombu import Connection

    from tasks.app import app

    deadline = time.monotonic() + timeout
    expected = len(workers)
    while True:
        for w in workers:
            if w.poll() is not None:
                raise RuntimeError(f"a bench worker exited ({w.returncode}) before it was ready")
        with Connection(broker) as conn:
            answered = app.control.ping(timeout=1.0, connection=conn)
        if len(answered) >= expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(answered)} of {expected} bench workers ready after {timeout:g} s")


def bench_env(home: str, database_url: str, broker: str, gmail_api_url: str, regime: str,
              windows_in_flight: int = WINDOWS_IN_FLIGHT) -> dict[str, str]:
    """The environment of a bench's workers and driver: this process's, minus any MAILPIPE_ setting."""
    from pipeline.credentials import new_key

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env.update({
        "MAILPIPE_HOME": home, "MAILPIPE_DATABASE_URL": database_url, "MAILPIPE_BROKER_URL": broker,
        "MAILPIPE_GMAIL_API_URL": gmail_api_url, "MAILPIPE_SECRET_KEY": new_key(),
        "MAILPIPE_GMAIL_REGIME": regime, "MAILPIPE_EMBEDDER": "none", "MAILPIPE_WINDOW_SIZE": "200",
        "MAILPIPE_WINDOWS_IN_FLIGHT": str(windows_in_flight), "HF_HUB_OFFLINE": "1",
    })
    return env


def run(regime: str, accounts: int, messages: int, latency: float, error_rate: float,
        ingest: int | None = None, windows_in_flight: int = WINDOWS_IN_FLIGHT) -> dict[str, Any]:
    import redis

    ingest = ingest or ingest_processes(accounts)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, regime, accounts, messages, latency, error_rate))
    server.start()
    try:
        info = parent.recv()
        with tempfile.TemporaryDirectory(prefix="mailpipe-bench-quota-") as tmp:
            from pipeline.storage.db import migrate
            from pipeline.storage.embedded import start_embedded_postgres, stop_embedded_postgres

            url = start_embedded_postgres(Path(tmp) / "pg")
            try:
                migrate(url)
                redis.Redis.from_url(BROKER).flushdb()
                env = bench_env(tmp, url, BROKER, info["base_url"], regime, windows_in_flight)
                os.environ.update(env)
                workers = _workers(env, ingest, Path(tmp))
                wait_until_ready(workers, BROKER)
                meter = CpuMeter({
                    "workers": lambda: [w.pid for w in workers],
                    "postgres": lambda: postmaster_pid(Path(tmp) / "pg"),
                    "redis (shared)": lambda: pids_named("redis-server"),
                    "gmail server (test double)": lambda: [server.pid] if server.pid else [],
                })
                try:
                    meter.start()
                    durations = _sync_all(url, info)
                    cpu = meter.stop()
                finally:
                    for w in workers:
                        w.terminate()
                    for w in workers:
                        w.wait(30)
                held = _held_keys(url)
            finally:
                # Before its folder goes: deleting it under a running server failed now and then (a file
                # written meanwhile: "Directory not empty").
                stop_embedded_postgres(Path(tmp) / "pg")
        parent.send("stop")
        server_side = parent.recv()
        server.join(30)
    finally:
        if server.is_alive():  # a failed run: nothing told it to stop, and a live child hangs this one's exit
            server.terminate()
            server.join(10)
    results = [_account_result(email, server_side, held.get(email, set()), durations[email], regime)
               for email in sorted(info["accounts"])]
    return {"regime": regime, "accounts": accounts, "messages_per_account": messages, "latency": latency,
            "ingest_processes": ingest, "windows_in_flight": windows_in_flight,
            "error_rate": error_rate, "results": [asdict(r) for r in results],
            "aggregate_gets_per_second": round(sum(r.gets_per_second for r in results), 2),
            "cpu": cpu.as_dict()}


def _sync_all(url: str, info: dict[str, Any], dispatch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Connect every account and run its sync (the CLI's driver code), all at once; the seconds each took.

    `dispatch` sends a window's chain (default: tasks.chains.dispatch_window).
    """
    from pipeline.accounts import connect_account, gmail_client
    from pipeline.credentials import OAuthGrant, TokenCipher
    from pipeline.settings import Settings
    from pipeline.storage.db import engine_for
    from pipeline.syncing import sync_account
    from tasks.chains import dispatch_window

    send = dispatch or dispatch_window

    settings = Settings()
    engine = engine_for(url)
    cipher = TokenCipher.from_settings(settings)
    ids = {email: connect_account(engine, cipher, email, OAuthGrant(token, "bench", "bench", info["token_uri"]))
           for email, token in info["accounts"].items()}
    durations: dict[str, float] = {}
    errors: list[BaseException] = []

    def one(email: str) -> None:
        started = time.monotonic()
        try:
            summary = sync_account(engine, settings, ids[email], gmail_client(engine, settings, ids[email]), send)
            if summary.status != "done":
                raise RuntimeError(f"{email}: {summary}")
        except BaseException as exc:  # reported after every thread ends
            errors.append(exc)
        durations[email] = time.monotonic() - started

    threads = [threading.Thread(target=one, args=(email,)) for email in info["accounts"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return durations


def _held_keys(url: str) -> dict[str, set[str]]:
    from sqlalchemy import text

    from pipeline.storage.db import engine_for

    with engine_for(url).connect() as conn:
        rows = conn.execute(text("SELECT a.email, m.message_key FROM messages m "
                                 "JOIN accounts a ON a.id = m.account_id"))
        held: dict[str, set[str]] = {}
        for email, key in rows:
            held.setdefault(email, set()).add(key)
    return held


def _account_result(email: str, server_side: dict[str, Any], held: set[str], seconds: float,
                    regime: str) -> AccountResult:
    stats = server_side["stats"][email]
    keys = set(server_side["keys"][email])
    gets = stats["units_by_method"].get("messages.get", 0) / GET_COST[regime]
    span = max(stats["last_charge_at"] - stats["first_charge_at"], 1e-9)
    ceiling = PER_MINUTE[regime] / 60 / GET_COST[regime]
    rate = gets / span
    return AccountResult(
        email=email, messages=len(keys), missing=len(keys - held), gets_per_second=round(rate, 2),
        ceiling_share=round(rate / ceiling, 3), units_per_message=round(stats["units"] / max(len(keys), 1), 2),
        rate_limited=stats["rate_limited"], injected_5xx=stats["injected_5xx"], sync_seconds=round(seconds, 1),
        token_refreshes=stats["token_refreshes"],
    )


def cpu_sentence(cpu: dict[str, Any], messages: int) -> str:
    """Where the CPU went during the syncs: the machine's busy share and each group's cores and cost."""
    seconds = max(float(cpu["seconds"]), 1e-9)
    groups = "; ".join(f"{name} {value / seconds:.2f} cores ({1000 * value / max(messages, 1):.1f} CPU-s per "
                       "1,000 messages)" for name, value in sorted(cpu["cpu_seconds"].items(), key=lambda kv: -kv[1]))
    return (f"CPU over the {seconds:.0f} s of syncing: the machine ({cpu['cores']} cores, other jobs included) "
            f"was {100 * float(cpu['machine_busy']):.0f}% busy; {groups}.")


def write_report(path: Path, data: dict[str, Any], messages: int) -> None:
    """The run's section of the report (`--report`; also from a `--json` output kept earlier)."""
    from bench.report import write_section

    regime, accounts = data["regime"], data["accounts"]
    ceiling = PER_MINUTE[regime] / 60 / GET_COST[regime]
    worst = min(r["ceiling_share"] for r in data["results"])
    missing = sum(r["missing"] for r in data["results"])
    command = (f"python -m bench.gmail_quota --regime {regime} --accounts {accounts} "
               f"--messages {messages} --latency {data['latency']} --error-rate {data['error_rate']}")
    if data.get("ingest_processes", ingest_processes(accounts)) != ingest_processes(accounts):
        command += f" --ingest-processes {data['ingest_processes']}"
    if data.get("windows_in_flight", WINDOWS_IN_FLIGHT) != WINDOWS_IN_FLIGHT:
        command += f" --windows-in-flight {data['windows_in_flight']}"
    rows = [[r["email"], str(r["messages"]), str(r["missing"]), str(r["gets_per_second"]),
             str(r["ceiling_share"]), str(r["units_per_message"]), str(r["rate_limited"]),
             str(r["injected_5xx"]), str(r.get("token_refreshes", "?"))] for r in data["results"]]
    write_section(path, f"ingest-quota-{regime}-{accounts}", command,
                  ["account", "messages", "missing", "gets/s", "share of ceiling", "units/message", "429s",
                   "injected 5xx", "token refreshes"], rows,
                  f"Ceiling {ceiling:g} messages/s per account; worst share {worst} (target ≥ 0.95); "
                  f"aggregate {data['aggregate_gets_per_second']} gets/s; missing {missing} (target 0). "
                  + cpu_sentence(data["cpu"], sum(r["messages"] for r in data["results"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=["legacy", "2026"], default="legacy")
    parser.add_argument("--messages", type=int, default=None, help="Per account (default: ~2 minutes of quota).")
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--ingest-processes", type=int, default=None,
                        help="The ingest worker's concurrency (default: twice the accounts, 4 to 12).")
    parser.add_argument("--windows-in-flight", type=int, default=WINDOWS_IN_FLIGHT,
                        help="Windows in flight per account (MAILPIPE_WINDOWS_IN_FLIGHT).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    ceiling = PER_MINUTE[args.regime] / 60 / GET_COST[args.regime]
    messages = args.messages or int(ceiling * 120)
    data = run(args.regime, args.accounts, messages, args.latency, args.error_rate, args.ingest_processes,
               args.windows_in_flight)
    worst = min(r["ceiling_share"] for r in data["results"])
    missing = sum(r["missing"] for r in data["results"])
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{'account':<22} {'msgs':>6} {'missing':>7} {'gets/s':>7} {'share':>6} {'units/msg':>9} "
              f"{'429s':>5} {'5xx':>5} {'sync s':>7} {'tokens':>6}")
        for r in data["results"]:
            print(f"{r['email']:<22} {r['messages']:>6} {r['missing']:>7} {r['gets_per_second']:>7} "
                  f"{r['ceiling_share']:>6} {r['units_per_message']:>9} {r['rate_limited']:>5} "
                  f"{r['injected_5xx']:>5} {r['sync_seconds']:>7} {r['token_refreshes']:>6}")
        print(f"ceiling {ceiling:g} gets/s per account; worst share {worst}; aggregate "
              f"{data['aggregate_gets_per_second']} gets/s; missing {missing}")
        print(cpu_sentence(data["cpu"], sum(r["messages"] for r in data["results"])))
    if args.report:
        write_report(args.report, data, messages)
    return 0 if worst >= 0.95 and missing == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
