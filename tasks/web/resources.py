"""What one web server process holds for all its requests: settings, one engine, Redis, the replay store,
the quota budget read for pauses, the search embedder (loaded on first search)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import Engine, text

from pipeline.accounts import quota_key
from pipeline.api_auth import PostgresReplayGuard, RedisReplayGuard, ReplayGuard
from pipeline.embeddings import Embedder, query_embedder_for
from pipeline.embeddings.recent import RecentQueries
from pipeline.resilience.quota import QuotaBudget, budget_for
from pipeline.resilience.shared_redis import shared_redis_url
from pipeline.settings import Settings
from pipeline.storage.db import engine_for

# A request must not wait out a Redis restart the way a worker does (pipeline.resilience.shared_redis):
# two quick tries, then the request fails with 503 and its caller retries.
REQUEST_REDIS_TIMEOUT = 2.0
BROKER_PING_TIMEOUT = 3.0


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    redis_client: redis.Redis | None
    replay: ReplayGuard
    budget: QuotaBudget
    _embedder: Any = field(default=None, repr=False)
    _embedder_loaded: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, settings: Settings, database_url: str) -> Resources:
        engine = engine_for(database_url, pool_size=settings.web_db_pool_size, pre_ping=False)
        url = shared_redis_url(settings)
        client = None
        if url:
            client = redis.Redis.from_url(
                url, socket_timeout=REQUEST_REDIS_TIMEOUT, socket_connect_timeout=REQUEST_REDIS_TIMEOUT,
                socket_keepalive=True, health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            )
        # Seen signatures live where the broker's Redis is (expiring keys); with no Redis, in PostgreSQL.
        replay: ReplayGuard = RedisReplayGuard(client) if client is not None else PostgresReplayGuard(engine)
        return cls(settings, engine, client, replay, budget_for(settings, engine, redis_client=client))

    def paused_for(self, account_id: int) -> float:
        """Seconds the account's Gmail quota stays paused by a rate limit (0: not paused)."""
        return max(0.0, self.budget.paused_until(quota_key(account_id)) - time.time())

    def embedder(self) -> Embedder | None:
        """The search embedder, made on first use (the local model takes seconds and memory to load)."""
        with self._lock:
            if not self._embedder_loaded:
                embedder = query_embedder_for(self.settings, self.engine)
                # Each page of a search runs it again: its query's vector is kept for the next page.
                self._embedder = RecentQueries(embedder) if embedder is not None else None
                self._embedder_loaded = True
            return self._embedder  # type: ignore[no-any-return]

    def check_database(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
