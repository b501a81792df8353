"""Which class an exception belongs to. Retry decisions are pure functions of the class."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pipeline.errors import ParseError

TRANSIENT, TIMEOUT, PERMANENT = "transient", "timeout", "permanent"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; `max_retries` None means the class is not retried."""

    base_seconds: float
    cap_seconds: float
    max_retries: int | None


POLICIES: dict[str, RetryPolicy] = {
    TRANSIENT: RetryPolicy(base_seconds=1.0, cap_seconds=64.0, max_retries=8),
    TIMEOUT: RetryPolicy(base_seconds=5.0, cap_seconds=120.0, max_retries=2),
    PERMANENT: RetryPolicy(base_seconds=0.0, cap_seconds=0.0, max_retries=None),
}


def classify(exc: BaseException) -> str:
    """Map an exception to its class. Unknown errors are permanent: retrying a bug changes nothing."""
    if isinstance(exc, ParseError):
        return PERMANENT
    if isinstance(exc, TimeoutError | socket.timeout):
        return TIMEOUT
    if type(exc).__name__ == "SoftTimeLimitExceeded":
        # Celery's soft time limit (billiard's class); matched by name so pipeline/ needs no Celery.
        return TIMEOUT
    if isinstance(exc, ConnectionError):
        return TRANSIENT
    try:
        import psycopg
        import sqlalchemy.exc as sa_exc
    except ImportError:  # pragma: no cover - both are dependencies
        return PERMANENT
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return TRANSIENT
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return TRANSIENT
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return TRANSIENT
    return PERMANENT


def backoff_seconds(error_class: str, retries: int, rand: float) -> float | None:
    """Seconds to wait before retry number `retries` + 1, or None when the class is not retried.

    `rand` in [0, 1) is passed in so the function stays pure (full jitter: uniform in [0, cap]).
    """
    policy = POLICIES[error_class]
    if policy.max_retries is None or retries >= policy.max_retries:
        return None
    ceiling = min(policy.cap_seconds, policy.base_seconds * (2**retries))
    return ceiling * rand
