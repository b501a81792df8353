"""Load on the sync web hook: a real `mailpipe serve` answering triggers at a fixed rate.

The server runs as users run it (`mailpipe serve --workers 2`, uvicorn, the embedded PostgreSQL, Redis as
broker); the load generator runs beside it on the same machine, in this process. It is open-loop: request
i is due at start + i / rate whatever the earlier ones did, and its latency is counted from when it was
due, so a slow server cannot slow the load down and hide its own queueing (coordinated omission).

Triggers go to `--accounts` Gmail accounts, a share signed with the account's webhook secret (HMAC, each
signature once: the replay check runs on every one of them), the rest with bearer tokens. Nothing consumes
the sync queue during the load, so each account's first trigger queues its run and every later one is
answered with that run: the burst case the coalescing is for. Afterwards: runs per account (target 1) and
sync tasks published per account (target 1).

    python -m bench.webhook [--rate 300] [--seconds 60] [--accounts 10] [--report docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter, postmaster_pid

ROOT = Path(__file__).resolve().parents[1]
BROKER = os.environ.get("MAILPIPE_BENCH_REDIS", "redis://127.0.0.1:6379/13")
TARGET_P95_MS = 100.0
SIGNED_SHARE = 0.2


@dataclass
class LoadResult:
    rate: float
    seconds: float
    sent: int
    answered_202: int
    errors: dict[str, int] = field(default_factory=dict)
    achieved_rate: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    late_sends: int = 0  # requests the generator itself sent more than 10 ms after they were due


@dataclass
class Tenant:
    email: str
    account_id: int
    token: str
    secret: str


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(url: str, accounts: int, env: dict[str, str]) -> list[Tenant]:
    from pipeline.api_auth import issue_token, webhook_secret
    from pipeline.runs import ensure_account
    from pipeline.settings import Settings
    from pipeline.storage.db import engine_for

    engine = engine_for(url)
    settings = Settings(secret_key=env["MAILPIPE_SECRET_KEY"])
    tenants = []
    for i in range(accounts):
        email = f"load{i}@example.com"
        account_id = ensure_account(engine, email, [email], kind="gmail")
        tenants.append(Tenant(email, account_id, issue_token(engine, account_id, "bench").token,
                              webhook_secret(settings, email)))
    engine.dispose()
    return tenants


def serve(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--no-access-log"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mailpipe serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("mailpipe serve did not become healthy")


def _request(tenant: Tenant, n: int, signed: bool) -> tuple[bytes, dict[str, str]]:
    """Request `n`'s body and headers, made when it is sent (a signature's timestamp is the send time)."""
    from pipeline.api_auth import sign

    if signed:
        # A distinct body per request (whitespace is JSON too): the same second's signatures all differ.
        body = ("{" + " " * (n % 4096) + "}").encode()
        ts = int(time.time())
        return body, {"X-Mailpipe-Timestamp": str(ts), "X-Mailpipe-Signature": sign(tenant.secret, ts, body),
                      "Content-Type": "application/json"}
    return b"", {"Authorization": f"Bearer {tenant.token}"}


async def _load(base: str, tenants: list[Tenant], rate: float, seconds: float, connections: int,
                seed: int = 1) -> LoadResult:
    import httpx

    rng = random.Random(seed)
    total = int(rate * seconds)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late = 0
    answered = 0
    # One client per connection, each a pool of one, handed out from a queue: at most `connections`
    # requests are in flight; the rest wait here, still timed from when they were due (an open loop: a
    # slow server is not given fewer requests). Handed to httpx all at once, a stall of the server queued
    # thousands in its pool, whose every hand-over scans that queue (session 12; py-spy: httpcore's
    # _assign_requests_to_connections). One shared pool of 32 was still costly: each hand-over checks
    # every idle connection's socket, ~23 µs a check under cProfile with anyio 4.16, ~0.7 ms a request; the
    # generator then needed 0.8 of a core at 300/s and sent two requests in three late (cProfile,
    # docs/PERFORMANCE.md, tenth round).
    free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    clients = [httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=1), timeout=10.0)
               for _ in range(connections)]
    for c in clients:
        free.put_nowait(c)
    try:
        start = time.perf_counter()

        async def one(i: int, signed: bool) -> None:
            nonlocal late, answered
            due = start + i / rate
            tenant = tenants[i % len(tenants)]
            client = await free.get()
            try:
                if time.perf_counter() - due > 0.010:
                    late += 1
                body, headers = _request(tenant, i, signed)
                try:
                    response = await client.post(f"/v1/accounts/{tenant.email}/sync", content=body,
                                                 headers=headers)
                    if response.status_code == 202:
                        answered += 1
                    else:
                        key = f"http {response.status_code}"
                        errors[key] = errors.get(key, 0) + 1
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
            finally:
                free.put_nowait(client)
            latencies.append((time.perf_counter() - due) * 1000)

        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, rng.random() < SIGNED_SHARE)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        for c in clients:
            await c.aclose()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LoadResult(rate=rate, seconds=seconds, sent=total, answered_202=answered, errors=errors,
                      achieved_rate=round(total / elapsed, 1), p50_ms=round(cuts[49], 1), p95_ms=round(cuts[94], 1),
                      p99_ms=round(cuts[98], 1), max_ms=round(max(latencies), 1), late_sends=late)


def _coalescing(url: str, broker: str, tenants: list[Tenant]) -> dict[str, Any]:
    """Runs and published sync tasks per account after the load: both must be exactly 1."""
    import base64

    import redis
    from sqlalchemy import text

    from pipeline.storage.db import engine_for

    engine = engine_for(url)
    with engine.connect() as conn:
        runs: dict[int, int] = {int(a): int(n) for a, n in conn.execute(
            text("SELECT account_id, count(*) FROM sync_runs GROUP BY account_id"))}
    engine.dispose()
    published: dict[int, int] = {}
    for raw in redis.Redis.from_url(broker).lrange("sync", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "mailpipe.sync":
            account = int(json.loads(base64.b64decode(message["body"]))[0][0])
            published[account] = published.get(account, 0) + 1
    ids = [t.account_id for t in tenants]
    return {"runs_per_account": sorted({int(runs.get(a, 0)) for a in ids}),
            "tasks_per_account": sorted({published.get(a, 0) for a in ids})}


def run(rate: float, seconds: float, accounts: int, workers: int, connections: int,
        broker: str = BROKER) -> dict[str, Any]:
    """The load and its checks; `broker` is a Redis database of the bench's own (it is flushed)."""
    import redis

    from pipeline.credentials import new_key
    from pipeline.storage.db import migrate
    from pipeline.storage.embedded import start_embedded_postgres

    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-webhook-") as tmp:
        url = start_embedded_postgres(Path(tmp) / "pg")
        migrate(url)
        redis.Redis.from_url(broker).flushdb()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
        env.update({"MAILPIPE_HOME": tmp, "MAILPIPE_DATABASE_URL": url, "MAILPIPE_BROKER_URL": broker,
                    "MAILPIPE_SECRET_KEY": new_key(), "MAILPIPE_EMBEDDER": "none", "HF_HUB_OFFLINE": "1"})
        tenants = _seed(url, accounts, env)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = serve(env, port, workers, Path(tmp) / "serve.log")
        try:
            wait_healthy(base, server)
            # Warm: every server process has its connections and each account its queued run.
            asyncio.run(_load(base, tenants, rate=min(rate, 100.0), seconds=2.0, connections=connections, seed=7))
            meter = CpuMeter({"web server": lambda: [server.pid], "postgres": lambda: postmaster_pid(Path(tmp) / "pg")},
                             this_process="load generator")
            load_before = os.getloadavg()[0]
            meter.start()
            result = asyncio.run(_load(base, tenants, rate, seconds, connections))
            cpu = meter.stop()
            coalescing = _coalescing(url, broker, tenants)
        finally:
            server.terminate()
            server.wait(30)
    return {"load": asdict(result), "coalescing": coalescing, "cpu": cpu.as_dict(), "accounts": accounts,
            "workers": workers, "connections": connections, "signed_share": SIGNED_SHARE,
            "load_average": f"{load_before:.1f} and {os.getloadavg()[0]:.1f}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="Requests per second (open loop).")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="Server processes (`mailpipe serve --workers`).")
    parser.add_argument("--connections", type=int, default=32, help="The generator's keep-alive connections.")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    data = run(args.rate, args.seconds, args.accounts, args.workers, args.connections)
    load, coalescing = data["load"], data["coalescing"]
    errors = sum(load["errors"].values())
    ok = load["p95_ms"] <= TARGET_P95_MS and errors == 0 and coalescing["runs_per_account"] == [1] \
        and coalescing["tasks_per_account"] == [1]
    seconds = max(float(data["cpu"]["seconds"]), 1e-9)
    cpu = ", ".join(f"{name} {value / seconds:.2f} cores" for name, value in data["cpu"]["cpu_seconds"].items())
    verdict = (
        f"Target p95 ≤ {TARGET_P95_MS:g} ms with 0 errors and one run per account: {'met' if ok else 'NOT met'}. "
        f"{load['sent']:,} triggers at {load['rate']:g}/s for {load['seconds']:g} s (achieved "
        f"{load['achieved_rate']}/s) over {data['accounts']} Gmail accounts, {int(SIGNED_SHARE * 100)}% signed "
        f"(HMAC and the replay check in Redis), the rest with bearer tokens; `mailpipe serve --workers "
        f"{data['workers']}` (uvicorn) on the embedded PostgreSQL with Redis as broker; the open-loop generator "
        f"(httpx, {data['connections']} keep-alive connections) in the bench process on the same 2 cores, latency "
        f"counted from each request's due time. Errors: {load['errors'] or 'none'}. Runs per account after the "
        f"load: {coalescing['runs_per_account']}, sync tasks published per account: "
        f"{coalescing['tasks_per_account']} (target [1] and [1]: the first trigger queued the run, every later "
        f"one was answered with it). CPU during the load: {cpu} (machine {100 * data['cpu']['machine_busy']:.0f}% "
        f"busy, load average {data['load_average']}). Requests the generator sent more than 10 ms late: "
        f"{load['late_sends']}."
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"sent {load['sent']} at {load['rate']}/s: 202 {load['answered_202']}, errors {load['errors']}, "
              f"p50 {load['p50_ms']} p95 {load['p95_ms']} p99 {load['p99_ms']} max {load['max_ms']} ms")
        print(verdict)
    if args.report:
        from bench.report import write_section

        command = (f"python -m bench.webhook --rate {args.rate:g} --seconds {args.seconds:g} --accounts "
                   f"{args.accounts} --workers {args.workers} --connections {args.connections}")
        rows = [[f"{load['rate']:g}/s × {load['seconds']:g} s", str(load["sent"]), str(load["answered_202"]),
                 str(errors), str(load["p50_ms"]), f"**{load['p95_ms']}**", str(load["p99_ms"]), str(load["max_ms"])]]
        write_section(args.report, "webhook", command,
                      ["load", "requests", "202", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows, verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
