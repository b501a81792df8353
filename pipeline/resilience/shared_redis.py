"""The Redis that holds state shared by every worker: quota buckets, breakers, concurrency slots.

One client recipe for all three, because each is on the hot path of every remote call: a Redis
restart must look like a short wait to them, not like an error that fails a window.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pipeline.settings import Settings

# A Redis restart (or a failover) takes seconds; 15 tries with backoff capped at 2 s ride out
# about 25 s of outage before the error reaches the caller, which then classifies it transient.
RETRY_ATTEMPTS = 15
RETRY_BACKOFF = ExponentialBackoff(cap=2.0, base=0.1)


def shared_redis_url(settings: Settings) -> str | None:
    """Redis for shared state: the explicit one, else the broker when it is Redis."""
    if settings.redis_url:
        return settings.redis_url
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return None


def shared_redis_client(url: str) -> redis.Redis:
    """A client that retries through a restart and notices a silently dead connection.

    No decode_responses: pybreaker's Redis storage decodes bytes itself.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(RETRY_BACKOFF, RETRY_ATTEMPTS),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
