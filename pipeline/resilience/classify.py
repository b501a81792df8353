"""Which class an exception belongs to. Retry decisions are pure functions of the class.

The classes (DESIGN.md §3): transient, rate_limit, quota, timeout, auth, gone, permanent. Each maps
to one retry policy below; nothing else in mailpipe decides whether to retry.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.errors import MailpipeError, ParseError

TRANSIENT, RATE_LIMIT, QUOTA, TIMEOUT = "transient", "rate_limit", "quota", "timeout"
AUTH, GONE, PERMANENT = "auth", "gone", "permanent"
ERROR_CLASSES = (TRANSIENT, RATE_LIMIT, QUOTA, TIMEOUT, AUTH, GONE, PERMANENT)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; `max_retries` None means the class is not retried."""

    base_seconds: float
    cap_seconds: float
    max_retries: int | None


POLICIES: dict[str, RetryPolicy] = {
    TRANSIENT: RetryPolicy(base_seconds=1.0, cap_seconds=64.0, max_retries=8),
    # Gmail's per-user limit can hold for minutes; a 10 s cap just hammers it (DESIGN.md §3).
    RATE_LIMIT: RetryPolicy(base_seconds=2.0, cap_seconds=600.0, max_retries=20),
    QUOTA: RetryPolicy(base_seconds=60.0, cap_seconds=3600.0, max_retries=30),
    TIMEOUT: RetryPolicy(base_seconds=5.0, cap_seconds=120.0, max_retries=2),
    AUTH: RetryPolicy(base_seconds=0.0, cap_seconds=0.0, max_retries=None),
    GONE: RetryPolicy(base_seconds=0.0, cap_seconds=0.0, max_retries=None),
    PERMANENT: RetryPolicy(base_seconds=0.0, cap_seconds=0.0, max_retries=None),
}


class ClassifiedError(MailpipeError):
    """An error that already knows its class (raised by sources after their own retries)."""

    error_class: str = PERMANENT

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class


def is_retried(error_class: str) -> bool:
    return POLICIES[error_class].max_retries is not None


def gmail_error_class(status: int, reason: str, message: str, *, method: str = "") -> str:
    """The class of a Gmail API error response (DESIGN.md §3's table), as a pure function."""
    reason_l, message_l = reason.lower(), message.lower()
    if status == 429 or reason_l in ("ratelimitexceeded", "userratelimitexceeded"):
        return RATE_LIMIT
    if status == 403 and (reason_l in ("dailylimitexceeded", "quotaexceeded") or "daily limit" in message_l):
        return QUOTA
    if status in (500, 502, 503, 504) or reason_l == "backenderror":
        return TRANSIENT
    if status == 401 or reason_l == "invalid_grant":
        return AUTH
    if status == 404:
        # On history.list a 404 is an expired cursor, which the sync handles by catching up.
        return GONE
    return PERMANENT


def http_error_parts(exc: Any) -> tuple[int, str, str]:
    """(status, first reason, message) of a googleapiclient HttpError, read from Google's error JSON."""
    status = int(getattr(getattr(exc, "resp", None), "status", 0) or 0)
    reason, message = "", str(getattr(exc, "reason", "") or "")
    try:
        body = json.loads((getattr(exc, "content", b"") or b"").decode("utf-8", "replace"))
        error = body.get("error", {}) if isinstance(body, dict) else {}
        if isinstance(error, dict):
            message = str(error.get("message", message))
            errors = error.get("errors") or []
            if errors and isinstance(errors[0], dict):
                reason = str(errors[0].get("reason", ""))
        elif isinstance(error, str):  # the OAuth endpoint's {"error": "invalid_grant"}
            reason = error
    except (ValueError, AttributeError):
        pass
    return status, reason, message


def is_interruption(exc: BaseException) -> bool:
    """Whether the error is, or wraps, our own stop (Celery's soft time limit), not the remote's doing.

    Matched by name so pipeline/ needs no Celery; the openai client wraps whatever interrupts a
    request in APIConnectionError, so the cause chain is followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if type(current).__name__ == "SoftTimeLimitExceeded":
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def classify(exc: BaseException) -> str:
    """Map an exception to its class. Unknown errors are permanent: retrying a bug changes nothing."""
    if isinstance(exc, ClassifiedError):
        return exc.error_class
    if isinstance(exc, ParseError):
        return PERMANENT
    if isinstance(exc, TimeoutError | socket.timeout):
        return TIMEOUT
    if type(exc).__name__ == "SoftTimeLimitExceeded":
        # Celery's soft time limit (billiard's class); matched by name so pipeline/ needs no Celery.
        return TIMEOUT
    if isinstance(exc, ConnectionError) or _is_redis_outage(exc):
        return TRANSIENT
    google = _classify_google(exc)
    if google is not None:
        return google
    remote_ai = _classify_openai(exc)
    if remote_ai is not None:
        return remote_ai
    return _classify_database(exc)


def _is_redis_outage(exc: BaseException) -> bool:
    """redis-py's ConnectionError and TimeoutError do not derive from the builtins of that name.

    Both mean the shared-state Redis is restarting or unreachable: the call never reached the
    remote service, so it is worth repeating (its own timeout is not the remote call's).
    """
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def _classify_google(exc: BaseException) -> str | None:
    try:
        import httplib2
        from google.auth.exceptions import RefreshError, TransportError
        from googleapiclient.errors import HttpError
    except ImportError:  # pragma: no cover - dependencies
        return None
    if isinstance(exc, HttpError):
        return gmail_error_class(*http_error_parts(exc))
    if isinstance(exc, RefreshError):
        # invalid_grant (revoked or expired refresh token) needs the user; a refresh that failed
        # on the network is google-auth's TransportError, not this.
        return AUTH
    if isinstance(exc, TransportError | httplib2.HttpLib2Error):
        return TRANSIENT
    return None


def openai_error_class(status: int, code: str, type_: str, message: str) -> str:
    """The class of an OpenAI API error response (its status and the `error` object's code and type).

    `insufficient_quota` is a 429 too, but it is billing, not pacing: waiting minutes does not help,
    so it is quota (paused until someone acts), never rate_limit. A 400 (context_length_exceeded
    included) and a 404 (a wrong model name: configuration, not a vanished item) are permanent.
    """
    code_l, type_l, message_l = (code or "").lower(), (type_ or "").lower(), (message or "").lower()
    if "insufficient_quota" in (code_l, type_l) or "exceeded your current quota" in message_l:
        return QUOTA
    if status == 429 or code_l == "rate_limit_exceeded":
        return RATE_LIMIT
    if status in (401, 403):
        return AUTH
    if status == 408:
        return TIMEOUT
    if status == 409 or status >= 500:
        # 409 is a lock timeout on OpenAI's side; the openai client retries it too.
        return TRANSIENT
    return PERMANENT


def _classify_openai(exc: BaseException) -> str | None:
    if "openai" not in sys.modules:
        return None  # nothing imported openai, so exc cannot be one of its errors: skip a heavy import
    try:
        import openai
    except ImportError:  # pragma: no cover - a dependency
        return None
    # APITimeoutError subclasses APIConnectionError: test it first.
    if isinstance(exc, openai.APITimeoutError):
        return TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return TRANSIENT
    if isinstance(exc, openai.APIStatusError):
        return openai_error_class(exc.status_code, str(exc.code or ""), str(exc.type or ""), exc.message)
    if isinstance(exc, openai.OpenAIError):
        # Malformed responses, length/content-filter finish reasons: retrying the same item changes nothing.
        return PERMANENT
    return None


def _classify_database(exc: BaseException) -> str:
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


def outage_backoff_seconds(retries: int, rand: float) -> float | None:
    """The wait before repeating a task that met a database or broker outage outside its stage's work.

    The transient class's ceilings with equal jitter (half fixed, half random) instead of full jitter:
    eight retries then span at least 95 s, so a restart of a few seconds is ridden out by every task,
    where full jitter may spend them all in its first seconds. None once the class's retries are spent.
    """
    ceiling = backoff_seconds(TRANSIENT, retries, 1.0)
    return None if ceiling is None else ceiling / 2 * (1.0 + rand)


def backoff_seconds(error_class: str, retries: int, rand: float) -> float | None:
    """Seconds to wait before retry number `retries` + 1, or None when the class is not retried.

    `rand` in [0, 1) is passed in so the function stays pure (full jitter: uniform in [0, cap]).
    """
    policy = POLICIES[error_class]
    if policy.max_retries is None or retries >= policy.max_retries:
        return None
    ceiling = min(policy.cap_seconds, policy.base_seconds * (2**retries))
    return ceiling * rand
