"""Container health checks, cheap enough to run every few seconds (no database, no migration, no CLI).

    python -m tasks.health beat          # 0 when a beat holds the RedBeat lock (it renews it every tick)
    python -m tasks.health http URL      # 0 when URL answers 200 (web /healthz, Flower /healthcheck)

Workers are checked with `celery -A tasks inspect ping -d <name>`: a reply proves the worker still
consumes from the broker, which a process check would not.
"""

from __future__ import annotations

import sys
import urllib.request

import redis

from pipeline.settings import Settings


def beat_holds_lock(settings: Settings) -> bool:
    """RedBeat's lock key exists: a beat is alive (the key expires 5 ticks after its holder stops)."""
    if not settings.broker_url:
        return False
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.exists(settings.beat_key_prefix + ":lock"))  # redbeat: key prefix + ":lock"
    finally:
        client.close()


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["beat"]:
        return 0 if beat_holds_lock(Settings()) else 1
    if argv[:1] == ["http"] and len(argv) == 2:
        return 0 if http_ok(argv[1]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
