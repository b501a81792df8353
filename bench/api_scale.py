"""The web API's read endpoints on a large database: p50/p95 per endpoint through a real `mailpipe serve`.

Point it at a populated database (the `db-scale` scenario keeps its 1M-message database with `--data DIR`;
any mailpipe database works). It issues a token for a sample of accounts, then requests, one after the
other from one client (closed loop: this measures each request's own latency, not throughput), each
endpoint with parameters drawn from that account's rows: a run's progress and its windows page, the
contacts and threads pages (first page and the page after), a thread. Target (issue #6): p95 ≤ 10 ms.

    python -m bench.api_scale (--data DIR | --database-url URL) [--requests 200] [--accounts 10] \\
        [--report docs/PERFORMANCE.md]

`--data DIR`: the folder `python -m bench.db_scale --data DIR` filled; its embedded server is started
(with the product's tuning, pipeline/storage/embedded.py) and migrated, as the product would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.webhook import free_port, serve, wait_healthy

BROKER = os.environ.get("MAILPIPE_BENCH_REDIS", "redis://127.0.0.1:6379/13")
TARGET_P95_MS = 10.0


def _sample(url: str, accounts: int, rng: random.Random) -> list[dict[str, Any]]:
    """Accounts with runs and threads, a token each, and the ids to ask for."""
    from sqlalchemy import text

    from pipeline.api_auth import issue_token
    from pipeline.storage.db import engine_for

    engine = engine_for(url)
    with engine.connect() as conn:
        ids = [int(a) for a in conn.execute(text(
            "SELECT a.id FROM accounts a WHERE EXISTS (SELECT 1 FROM sync_runs r WHERE r.account_id = a.id) "
            "AND EXISTS (SELECT 1 FROM threads t WHERE t.account_id = a.id) ORDER BY a.id")).scalars()]
        chosen = rng.sample(ids, min(accounts, len(ids)))
        sample: list[dict[str, Any]] = []
        for account in chosen:
            runs = [int(r) for r in conn.execute(text(
                "SELECT id FROM sync_runs WHERE account_id = :a ORDER BY id DESC LIMIT 20"), {"a": account}).scalars()]
            threads = [int(t) for t in conn.execute(text(
                "SELECT id FROM threads WHERE account_id = :a ORDER BY random() LIMIT 50"), {"a": account}).scalars()]
            sample.append({"account": account, "runs": runs, "threads": threads, "token": ""})
    for entry in sample:
        entry["token"] = issue_token(engine, int(entry["account"]), "bench").token
    engine.dispose()
    return sample


def _percentiles(ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"n": len(ms), "p50_ms": round(cuts[49], 2), "p95_ms": round(cuts[94], 2), "max_ms": round(max(ms), 2)}


def measure(base: str, sample: list[dict[str, Any]], requests: int, rng: random.Random) -> dict[str, dict[str, float]]:
    import httpx

    def auth(entry: dict[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {entry['token']}"}

    def next_page(client: httpx.Client, path: str, entry: dict[str, Any]) -> str:
        first = client.get(path, params={"limit": 50}, headers=auth(entry)).json()
        return f"{path}?limit=50&cursor={first['next_cursor']}" if first.get("next_cursor") else f"{path}?limit=50"

    endpoints: dict[str, Callable[[httpx.Client, dict[str, Any]], str]] = {
        "GET /v1/runs/{id}": lambda c, e: f"/v1/runs/{rng.choice(e['runs'])}",
        "GET /v1/runs/{id}/windows": lambda c, e: f"/v1/runs/{rng.choice(e['runs'])}/windows?limit=50",
        "GET /v1/contacts (first page)": lambda c, e: "/v1/contacts?limit=50",
        "GET /v1/contacts (next page)": lambda c, e: next_page(c, "/v1/contacts", e),
        "GET /v1/threads (first page)": lambda c, e: "/v1/threads?limit=50",
        "GET /v1/threads (next page)": lambda c, e: next_page(c, "/v1/threads", e),
        "GET /v1/threads/{id}": lambda c, e: f"/v1/threads/{rng.choice(e['threads'])}",
    }
    timings: dict[str, list[float]] = {name: [] for name in endpoints}
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for name, path_of in endpoints.items():
            for i in range(requests + 10):
                entry = sample[i % len(sample)]
                path = path_of(client, entry)  # untimed: a next page's cursor comes from a first page
                started = time.perf_counter()
                response = client.get(path, headers=auth(entry))
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                if i >= 10:  # the first ten warm the server's connections and caches
                    timings[name].append(elapsed)
    return {name: _percentiles(ms) for name, ms in timings.items()}


def run(database_url: str, requests: int, accounts: int, seed: int = 1) -> dict[str, Any]:
    from pipeline.credentials import new_key
    from pipeline.storage.db import migrate

    rng = random.Random(seed)
    migrate(database_url)
    sample = _sample(database_url, accounts, rng)
    if not sample:
        raise SystemExit("the database holds no account with runs and threads")
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-api-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
        env.update({"MAILPIPE_HOME": tmp, "MAILPIPE_DATABASE_URL": database_url, "MAILPIPE_BROKER_URL": BROKER,
                    "MAILPIPE_SECRET_KEY": new_key(), "MAILPIPE_EMBEDDER": "none", "HF_HUB_OFFLINE": "1"})
        port = free_port()
        server = serve(env, port, 1, Path(tmp) / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, server)
            load_before = os.getloadavg()[0]
            results = measure(base, sample, requests, rng)
        finally:
            server.terminate()
            server.wait(30)
    from sqlalchemy import text

    from pipeline.storage.db import engine_for

    engine = engine_for(database_url)
    with engine.connect() as conn:
        messages = int(conn.execute(text("SELECT count(*) FROM messages")).scalar() or 0)
        account_count = int(conn.execute(text("SELECT count(*) FROM accounts")).scalar() or 0)
    engine.dispose()
    return {"messages": messages, "accounts": account_count, "sampled_accounts": len(sample), "endpoints": results,
            "load_average": f"{load_before:.1f} and {os.getloadavg()[0]:.1f}"}


def write_report(path: Path, data: dict[str, Any], requests: int, accounts: int) -> None:
    """The run's section of the report (`--report`; also from a `--json` output kept earlier)."""
    from bench.report import write_section

    ok = all(r["p95_ms"] <= TARGET_P95_MS for r in data["endpoints"].values())
    rows = [[name, str(r["n"]), str(r["p50_ms"]), f"**{r['p95_ms']}**", str(r["max_ms"])]
            for name, r in data["endpoints"].items()]
    verdict = (
        f"Target p95 ≤ {TARGET_P95_MS:g} ms per endpoint: {'met' if ok else 'NOT met'}. Database: "
        f"{data['messages']:,} messages over {data['accounts']} accounts; {data['sampled_accounts']} accounts "
        "sampled, each request with a bearer token of one of them and ids drawn from its rows. One "
        "`mailpipe serve` process (uvicorn), requests one after the other from one client on the same "
        "machine (closed loop: each request's own latency, client and HTTP included); a next page's "
        "cursor comes from an untimed first page. Load average before and after: "
        f"{data['load_average']}."
    )
    write_section(path, "api-scale", "python -m bench.api_scale --data <the db-scale --data folder> "
                  f"--requests {requests} --accounts {accounts}",
                  ["endpoint", "requests", "p50 ms", "p95 ms", "max ms"], rows, verdict)


def _embedded(data: Path) -> str:
    from pipeline.storage.db import migrate
    from pipeline.storage.embedded import start_embedded_postgres

    if not (data / "pgdata" / "PG_VERSION").exists():
        raise SystemExit(f"{data}: no database there (fill it with python -m bench.db_scale --data {data})")
    url = start_embedded_postgres(data / "pgdata")
    migrate(url)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database-url", help="A populated mailpipe database (SQLAlchemy URL).")
    where.add_argument("--data", type=Path, help="A `bench.db_scale --data` folder: its embedded server is used.")
    parser.add_argument("--requests", type=int, default=200, help="Timed requests per endpoint.")
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    data = run(args.database_url or _embedded(args.data), args.requests, args.accounts)
    ok = all(r["p95_ms"] <= TARGET_P95_MS for r in data["endpoints"].values())
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for name, r in data["endpoints"].items():
            print(f"{name:<32} n={r['n']:<4} p50 {r['p50_ms']:>7} ms  p95 {r['p95_ms']:>7} ms  max {r['max_ms']:>8} ms")
    if args.report:
        write_report(args.report, data, args.requests, args.accounts)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
