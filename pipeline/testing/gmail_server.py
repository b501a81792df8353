"""A Gmail-compatible HTTP server for tests, demos and benchmarks: Gmail's wire format, quota and faults.

It answers google-api-python-client exactly where Gmail would: the REST paths of the shipped
discovery document (`/gmail/v1/users/{userId}/...`), the batch endpoint (`/batch/gmail/v1`, and
`/batch`, the discovery document's batchPath) and an OAuth token endpoint (`/token`). Point a client
at it with `client_options={"api_endpoint": server.base_url}`, `token_uri=server.token_uri`, and
`BatchHttpRequest(batch_uri=server.batch_uri)`: `service.new_batch_http_request()` ignores
api_endpoint and would go to googleapis.com.

Each API call passes, in order: the `on_call` hook; authentication (a 401 for a missing, unknown,
expired or `expire_tokens()`-revoked access token, or while `unauthorized_next` lasts); the quota
check; injected 5xx; an injected stall (timeout); the method itself. Decisions, each chosen so that
what a benchmark measures is the client:

- Quota is a rolling 60-second window of units per user (plus an optional per-project window and a
  project-wide daily limit). A call that would take the window over the limit is refused and not
  charged, so a client pacing at exactly the limit is never refused and a burst over it is.
- Injected 5xx are not charged: "units charged / ceiling" then counts only useful work the server
  allowed, and a client that backs off from 5xx is not penalised twice. Stalls (timeouts) are
  charged: the server did the work, the client just stopped waiting, as with Gmail.
- A 404 (message deleted between list and get) is charged, as Gmail charges it.
- A rate-limit answer (429, or 403 userRateLimitExceeded) announces a deadline ("Retry after <time>",
  Retry-After). From the moment that answer has been written to the client until its deadline, every
  call of that user the server receives counts in `stats(email)["calls_during_pause"]`: a client that
  pauses the whole account, as Gmail asks, makes none. A call received before the answer was written
  does not count (another worker's batch sent while the answer was on its way), even when the server
  serves it after; every call of a batch counts as received when the batch was.
- `latency` is slept once per HTTP request, before its calls: a batch of 50 costs one round trip,
  not 50, which is what batching buys against a real network.
- Batches: more than `max_batch` parts (default 50) are refused whole with Gmail's 400
  "Inner request count exceeds the limit. Received: N, Limit: M" (Gmail's real hard limit is 100 with
  that text; above 50 it rate-limits in practice, so we refuse at 50 to make such clients fail
  loudly). Each inner call is authenticated, charged and fault-checked on its own; its failure is
  that part's status.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.testing.gmail_mailbox import (
    FORMATS,
    HISTORY_TYPES,
    FakeMailbox,
    HistoryExpired,
    InvalidArgument,
    MessageNotFound,
    attachment_resource,
    message_resource,
)
from pipeline.testing.http import Handler, Served, ServerThread, serve_until_signal

DEFAULT_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
BATCH_PATHS = ("/batch/gmail/v1", "/batch")
DEFAULT_MAX_BATCH = 50
_PAUSE_MEMORY = 600.0  # seconds a rate limit's deadline is kept after it passed (for calls still in the server)
WATCH_DAYS = 7
_JSON = "application/json; charset=UTF-8"
log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- quota regimes

_LEGACY_COSTS: dict[str, int] = {
    "messages.get": 5, "attachments.get": 5, "messages.list": 5, "history.list": 2, "getProfile": 1,
    "threads.get": 10, "labels.list": 1, "watch": 100, "stop": 50,
}
# threads.get's 2026 cost was not published; the legacy value is kept (DESIGN.md §3).
_Y2026_COSTS: dict[str, int] = {**_LEGACY_COSTS, "messages.get": 20, "attachments.get": 20}


@dataclass(frozen=True)
class QuotaRegime:
    """Units per user per rolling minute, per-method costs, optional project-wide limits.

    `window_seconds` shortens the rolling "minute" the per-user and per-project limits count over
    (Gmail's is 60 s): a test of rate-limit episodes then waits seconds, not minutes, per episode.
    """

    per_user_per_minute: int
    costs: Mapping[str, int]
    daily_limit: int | None = None  # project-wide, per UTC day, like Gmail's per-project daily quota
    rate_status: int = 429  # 403 answers rate limits the older way (userRateLimitExceeded)
    per_project_per_minute: int | None = None
    window_seconds: float = 60.0

    @classmethod
    def legacy(cls, **overrides: Any) -> QuotaRegime:
        return cls(**{"per_user_per_minute": 15_000, "costs": dict(_LEGACY_COSTS),
                      "per_project_per_minute": 1_200_000, **overrides})

    @classmethod
    def y2026(cls, **overrides: Any) -> QuotaRegime:
        return cls(**{"per_user_per_minute": 6_000, "costs": dict(_Y2026_COSTS),
                      "per_project_per_minute": 1_200_000, "daily_limit": 80_000_000, **overrides})

    def cost(self, method: str) -> int:
        return self.costs.get(method, 1)


# ---------------------------------------------------------------------- faults


@dataclass
class Faults:
    """Injected failures, changeable while the server runs (plain attribute writes are atomic)."""

    error_rate: float = 0.0  # fraction of API calls answered 500 or 503 (backendError)
    latency: float = 0.0  # seconds slept once per HTTP request (a batch is one request)
    timeout_rate: float = 0.0  # fraction of API calls stalled for timeout_seconds before answering
    timeout_seconds: float = 30.0
    unauthorized_next: int = 0  # the next N API calls get 401 whatever their token
    invalid_grant: bool = False  # the token endpoint refuses every refresh
    delete_on_get: set[str] = field(default_factory=set)  # deleted just before messages.get of them
    on_call: Callable[[str, int], None] | None = None  # (method, call number) before each API call
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False)
    _token_epoch: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def expire_tokens(self) -> None:
        """Invalidate every access token issued so far; clients must refresh."""
        with self._lock:
            self._token_epoch += 1

    @property
    def token_epoch(self) -> int:
        return self._token_epoch

    def roll_error(self) -> int | None:
        with self._lock:
            if self.error_rate <= 0 or self._rng.random() >= self.error_rate:
                return None
            return self._rng.choice((500, 503))

    def roll_timeout(self) -> bool:
        with self._lock:
            return self.timeout_rate > 0 and self._rng.random() < self.timeout_rate

    def take_unauthorized(self) -> bool:
        with self._lock:
            if self.unauthorized_next <= 0:
                return False
            self.unauthorized_next -= 1
            return True

    def take_delete_on_get(self, message_id: str) -> bool:
        with self._lock:
            if message_id not in self.delete_on_get:
                return False
            self.delete_on_get.discard(message_id)
            return True


# ---------------------------------------------------------------------- errors and messages


class ApiError(Exception):
    """An answer in Google's error JSON; `kind` names the counter it bumps."""

    def __init__(self, status: int, message: str, reason: str, *, domain: str = "global",
                 headers: Mapping[str, str] | None = None, kind: str = "", retry_at: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.domain = status, message, reason, domain
        self.headers = dict(headers or {})
        self.kind = kind
        self.retry_at = retry_at  # a rate limit's deadline (time.monotonic()): no call of the user before it

    def response(self) -> Response:
        error = {"code": self.status, "message": self.message,
                 "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
                 "status": _GOOGLE_STATUS.get(self.status, "UNKNOWN")}
        return Response.json(self.status, {"error": error}, self.headers)


_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def _not_found() -> ApiError:
    return ApiError(404, "Requested entity was not found.", "notFound", kind="not_found")


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, "invalidArgument", kind="bad_request")


def _unauthenticated() -> ApiError:
    message = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
               "or other valid authentication credential. See "
               "https://developers.google.com/identity/sign-in/web/devconsole-project.")
    return ApiError(401, message, "authError", kind="unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'})


def _backend_error(status: int) -> ApiError:
    message = "Backend Error" if status == 500 else "The service is currently unavailable."
    return ApiError(status, message, "backendError", kind="injected_5xx")


def _rate_limited(status: int, wait: float, per_user: bool) -> ApiError:
    retry_at = time.monotonic() + wait
    until = datetime.now(UTC) + timedelta(seconds=wait)
    # Rounded up to the millisecond, as the Retry-After header is to the second: a client that waits
    # exactly as long as either says is never early.
    until = until.replace(microsecond=0) + timedelta(milliseconds=math.ceil(until.microsecond / 1000))
    stamp = until.strftime("%Y-%m-%dT%H:%M:%S.") + f"{until.microsecond // 1000:03d}Z"
    scope = "User-rate limit exceeded." if per_user else "Rate Limit Exceeded."
    message = f"{scope}  Retry after {stamp}"
    reason = "rateLimitExceeded" if status == 429 else "userRateLimitExceeded"
    return ApiError(status, message, reason, domain="usageLimits", kind="rate_limited",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))}, retry_at=retry_at)


def _daily_limited() -> ApiError:
    message = "Daily Limit Exceeded. The quota will be reset at midnight Pacific Time (PT)."
    return ApiError(403, message, "dailyLimitExceeded", domain="usageLimits", kind="daily_limited")


# ---------------------------------------------------------------------- requests and responses


@dataclass(frozen=True, slots=True)
class Request:
    verb: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @classmethod
    def build(cls, verb: str, target: str, headers: Mapping[str, str], body: bytes) -> Request:
        parts = urlsplit(target)
        return cls(verb.upper(), parts.path, parse_qs(parts.query, keep_blank_values=True),
                   {k.lower(): v for k, v in headers.items()}, body)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def params(self, name: str) -> list[str]:
        return self.query.get(name, [])


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # (user, deadline) of each rate-limit answer it carries, a batch's included: see GmailServer.deliver.
    rate_limits: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": _JSON, "Vary": "Origin, X-Origin, Referer",
                                                          **(headers or {})})


# ---------------------------------------------------------------------- quota ledger


class _Window:
    """Units spent in the last `seconds`, as (time, units) events."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def used(self, now: float) -> int:
        while self.events and self.events[0][0] <= now - self.seconds:
            self.total -= self.events.popleft()[1]
        return self.total

    def wait_for(self, now: float, units: int, limit: int) -> float:
        """Seconds until `units` more fit under `limit`."""
        excess = self.used(now) + units - limit
        for when, spent in self.events:
            excess -= spent
            if excess <= 0:
                return max(0.0, when + self.seconds - now)
        return self.seconds

    def add(self, now: float, units: int) -> None:
        self.events.append((now, units))
        self.total += units


class QuotaLedger:
    """Server-side quota for every user: admit or refuse a call before it runs."""

    def __init__(self, regime: QuotaRegime | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.regime = regime
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, _Window] = {}
        self._project = _Window(regime.window_seconds if regime is not None else 60.0)
        self._day = ("", 0)

    def admit(self, email: str, method: str, *, charge: bool) -> int:
        """Units charged (0 when not charging or no regime); raises ApiError when over a limit."""
        regime = self.regime
        if regime is None:
            return 0
        cost = regime.cost(method)
        with self._lock:
            now = self._clock()
            self._check_daily(regime, cost)
            window = self._users.setdefault(email, _Window(regime.window_seconds))
            _check_window(window, now, cost, regime.per_user_per_minute, regime.rate_status, per_user=True)
            if regime.per_project_per_minute is not None:
                _check_window(self._project, now, cost, regime.per_project_per_minute, 429, per_user=False)
            if not charge:
                return 0
            window.add(now, cost)
            self._project.add(now, cost)
            self._day = (self._day[0], self._day[1] + cost)
            return cost

    def _check_daily(self, regime: QuotaRegime, cost: int) -> None:
        today = datetime.now(UTC).date().isoformat()
        if self._day[0] != today:
            self._day = (today, 0)
        if regime.daily_limit is not None and self._day[1] + cost > regime.daily_limit:
            raise _daily_limited()


def _check_window(window: _Window, now: float, cost: int, limit: int, status: int, *, per_user: bool) -> None:
    used = window.used(now)
    # A call dearer than the whole limit could never run; let it through on an idle window.
    if used and used + cost > limit:
        raise _rate_limited(status, window.wait_for(now, cost, limit), per_user)


# ---------------------------------------------------------------------- statistics


@dataclass(slots=True)
class _Pause:
    """A rate-limit answer: written to the client at `answered_at` (inf while being written), announcing
    `retry_at`; both time.monotonic()."""

    retry_at: float
    answered_at: float = math.inf


@dataclass
class _Counters:
    calls: Counter[str] = field(default_factory=Counter)
    units_by_method: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # ApiError kinds
    timeouts: int = 0
    calls_during_pause: int = 0  # calls received while a rate limit the user had been sent was in force
    batch_requests: int = 0
    batch_items: list[int] = field(default_factory=list)
    token_refreshes: int = 0
    first_charge_at: float | None = None
    last_charge_at: float | None = None

    def charge(self, method: str, units: int) -> None:
        if units:
            self.units_by_method[method] += units
            now = time.time()
            self.first_charge_at = self.first_charge_at or now
            self.last_charge_at = now

    def note_batch(self, items: int) -> None:
        self.batch_requests += 1
        self.batch_items.append(items)

    def note_timeout(self) -> None:
        self.timeouts += 1

    def note_call(self, method: str, during_pause: bool) -> None:
        self.calls[method] += 1
        self.calls_during_pause += during_pause

    def note_refresh(self) -> None:
        self.token_refreshes += 1

    def merge(self, other: _Counters) -> None:
        self.calls.update(other.calls)
        self.units_by_method.update(other.units_by_method)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.timeouts += other.timeouts
        self.calls_during_pause += other.calls_during_pause
        self.batch_requests += other.batch_requests
        self.batch_items.extend(other.batch_items)
        self.token_refreshes += other.token_refreshes
        firsts = [t for t in (self.first_charge_at, other.first_charge_at) if t is not None]
        lasts = [t for t in (self.last_charge_at, other.last_charge_at) if t is not None]
        self.first_charge_at = min(firsts) if firsts else None
        self.last_charge_at = max(lasts) if lasts else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "calls_total": sum(self.calls.values()),
            "units": sum(self.units_by_method.values()),
            "units_by_method": dict(self.units_by_method),
            "statuses": dict(self.statuses),
            "rate_limited": self.errors["rate_limited"],
            "daily_limited": self.errors["daily_limited"],
            "injected_5xx": self.errors["injected_5xx"],
            "unauthorized": self.errors["unauthorized"],
            "not_found": self.errors["not_found"],
            "timeouts": self.timeouts,
            "calls_during_pause": self.calls_during_pause,
            "batch_requests": self.batch_requests,
            "batch_items": list(self.batch_items),
            "token_refreshes": self.token_refreshes,
            "first_charge_at": self.first_charge_at,
            "last_charge_at": self.last_charge_at,
        }


# ---------------------------------------------------------------------- OAuth


@dataclass(frozen=True, slots=True)
class _AccessToken:
    email: str
    epoch: int
    expires_at: float


class _Tokens:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._refresh: dict[str, str] = {}
        self._access: dict[str, _AccessToken] = {}

    def issue_refresh(self, email: str) -> str:
        token = "1//fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = email
        return token

    def email_for_refresh(self, token: str) -> str | None:
        with self._lock:
            return self._refresh.get(token)

    def issue_access(self, email: str, epoch: int) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            self._access[token] = _AccessToken(email, epoch, time.monotonic() + self.lifetime)
        return token

    def email_for_access(self, token: str, epoch: int) -> str | None:
        with self._lock:
            found = self._access.get(token)
        if found is None or found.epoch != epoch or found.expires_at <= time.monotonic():
            return None
        return found.email


# ---------------------------------------------------------------------- routing

_USER = r"^/gmail/v1/users/(?P<user>[^/]+)"
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (verb, re.compile(_USER + pattern + "$"), method)
    for verb, pattern, method in (
        ("GET", "/profile", "getProfile"),
        ("GET", "/messages", "messages.list"),
        ("GET", "/messages/(?P<mid>[^/]+)/attachments/(?P<id>[^/]+)", "attachments.get"),
        ("GET", "/messages/(?P<id>[^/]+)", "messages.get"),
        ("GET", "/threads/(?P<id>[^/]+)", "threads.get"),
        ("GET", "/history", "history.list"),
        ("GET", "/labels", "labels.list"),
        ("POST", "/watch", "watch"),
        ("POST", "/stop", "stop"),
    )
)


def _route(req: Request) -> tuple[str, dict[str, str]] | None:
    for verb, pattern, method in _ROUTES:
        match = pattern.match(req.path)
        if match and req.verb == verb:
            return method, {k: unquote(v) for k, v in match.groupdict().items()}
    return None


# ---------------------------------------------------------------------- the server


class GmailServer(Served):
    """Gmail's REST and batch API over HTTP for one or more FakeMailboxes, with quota and faults."""

    def __init__(self, mailboxes: Mapping[str, FakeMailbox] | FakeMailbox, *, quota: QuotaRegime | None = None,
                 faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0,
                 max_batch: int = DEFAULT_MAX_BATCH, token_lifetime: float = 3599.0) -> None:
        # Keyed by each mailbox's own address, whatever the mapping's keys.
        boxes = [mailboxes] if isinstance(mailboxes, FakeMailbox) else list(mailboxes.values())
        self.mailboxes: dict[str, FakeMailbox] = {box.email.lower(): box for box in boxes}
        self.quota = QuotaLedger(quota)
        self.faults = faults if faults is not None else Faults()
        self.max_batch = max_batch
        self.host, self.port = host, port
        self._tokens = _Tokens(token_lifetime)
        self._stats_lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}
        self._pauses: dict[str, list[_Pause]] = {}  # per user, the rate-limit answers written to the client
        self._call_number = 0
        self._http = ServerThread(_Handler, self, "fake-gmail")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        if not self._http.running:
            self.port = self._http.start(self.host, self.port)
        return self.base_url

    def stop(self) -> None:
        self._http.stop()

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"

    @property
    def batch_uri(self) -> str:
        return self.base_url + BATCH_PATHS[0]

    # ------------------------------------------------------------------ accounts and statistics

    def issue_refresh_token(self, email: str) -> str:
        """A refresh token for `email`'s mailbox; any non-empty client_id/client_secret go with it."""
        if email.lower() not in self.mailboxes:
            raise KeyError(f"no mailbox for {email!r}")
        return self._tokens.issue_refresh(email.lower())

    def mailbox(self, email: str) -> FakeMailbox:
        return self.mailboxes[email.lower()]

    def reset_stats(self) -> None:
        """Forget every counter and the rate limits sent so far (a long-lived test server serving one test
        after another)."""
        with self._stats_lock:
            self._counters = {}
            self._pauses = {}

    def stats(self, email: str | None = None) -> dict[str, Any]:
        """Counters for one mailbox, or (None) for everything including unauthenticated calls."""
        with self._stats_lock:
            if email is not None:
                return self._counters.get(email.lower(), _Counters()).as_dict()
            total = _Counters()
            for counters in self._counters.values():
                total.merge(counters)
            return total.as_dict()

    def _count(self, email: str | None, update: Callable[[_Counters], None]) -> None:
        with self._stats_lock:
            update(self._counters.setdefault(email or "", _Counters()))

    # ------------------------------------------------------------------ HTTP entry point

    def handle(self, req: Request, *, arrived_at: float | None = None) -> Response:
        """One HTTP request, received at `arrived_at` (time.monotonic(); default now): the token endpoint,
        a batch, or a single API call."""
        arrived = time.monotonic() if arrived_at is None else arrived_at
        if req.path == "/token" and req.verb == "POST":
            return self._token(req)
        if req.path.rstrip("/") in BATCH_PATHS and req.verb == "POST":
            self._sleep_latency()
            return self._batch(req, arrived)
        if req.path.startswith("/gmail/v1/"):
            self._sleep_latency()
            return self.call(req, arrived_at=arrived)
        return ApiError(404, "Not Found", "notFound").response()

    def deliver(self, resp: Response, write: Callable[[Response], bool]) -> None:
        """Write `resp` with `write` (False: the client had gone). The rate limits it carries are in force
        from the moment the write is done until their deadlines: a call of their user received meanwhile
        counts in `calls_during_pause`.

        Calls received before (another worker's batch sent while this answer was on its way) do not count,
        even when served after: their client could not have known. The deadline is the one the answer
        announced (its "Retry after" time, which Retry-After rounds up to the second)."""
        pauses = [_Pause(retry_at) for _, retry_at in resp.rate_limits]
        if pauses:
            now = time.monotonic()
            with self._stats_lock:
                for (email, _), pause in zip(resp.rate_limits, pauses, strict=True):
                    kept = self._pauses.setdefault(email, [])
                    # Deadlines long past can no longer match a call still being served: keep the list short.
                    kept[:] = [p for p in kept if p.retry_at > now - _PAUSE_MEMORY] + [pause]
        if write(resp) and pauses:
            # A call checked before this moment was received before it, so it could not count anyway.
            done = time.monotonic()
            with self._stats_lock:
                for pause in pauses:
                    pause.answered_at = done

    def _during_pause(self, email: str, arrived: float) -> bool:
        with self._stats_lock:
            return any(p.answered_at <= arrived < p.retry_at for p in self._pauses.get(email, ()))

    def _sleep_latency(self) -> None:
        if self.faults.latency > 0:
            time.sleep(self.faults.latency)

    # ------------------------------------------------------------------ one API call

    def call(self, req: Request, *, arrived_at: float | None = None) -> Response:
        """One API call, direct or inside a batch (received at `arrived_at`, time.monotonic(); default now):
        hook, auth, quota, faults, then the method."""
        arrived = time.monotonic() if arrived_at is None else arrived_at
        routed = _route(req)
        if routed is None:
            return ApiError(404, f"Method not found: {req.verb} {req.path}", "notFound").response()
        method, args = routed
        with self._stats_lock:
            self._call_number += 1
            number = self._call_number
        email = self._token_email(req)
        try:
            hook = self.faults.on_call
            if hook is not None:
                hook(method, number)
            email = self._authorize(email, args["user"])
            during_pause = self._during_pause(email, arrived)
            self._count(email, lambda c: c.note_call(method, during_pause))
            self._admit(email, method)
            self._maybe_stall(email)
            response = _HANDLERS[method](self, self.mailboxes[email], args, req)
        except ApiError as exc:
            response = exc.response()
            kind = exc.kind
            self._count(email, lambda c: c.errors.update([kind]) if kind else None)
            if exc.retry_at is not None and email is not None:
                response.rate_limits.append((email, exc.retry_at))
        except Exception as exc:
            # A bug here (or in a test's hook) must show up as itself, not as a dropped connection that
            # a client would retry as a network error; inside a batch it fails only its own part.
            log.exception("fake Gmail: %s failed", method)
            response = ApiError(500, f"Internal error in the fake server: {exc!r}", "internalError").response()
        self._count(email, lambda c: c.statuses.update([response.status]))
        return response

    def _token_email(self, req: Request) -> str | None:
        """The mailbox of the request's access token; None when missing, unknown, expired or revoked."""
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else req.param("access_token")
        return self._tokens.email_for_access(token, self.faults.token_epoch) if token else None

    def _authorize(self, email: str | None, user: str) -> str:
        if self.faults.take_unauthorized() or email is None:
            raise _unauthenticated()
        if user.lower() not in ("me", email):
            raise ApiError(403, f"Delegation denied for {email}", "forbidden", kind="forbidden")
        return email

    def _admit(self, email: str, method: str) -> None:
        injected = self.faults.roll_error()
        units = self.quota.admit(email, method, charge=injected is None)
        if injected is not None:
            raise _backend_error(injected)
        self._count(email, lambda c: c.charge(method, units))

    def _maybe_stall(self, email: str) -> None:
        if self.faults.roll_timeout():
            self._count(email, _Counters.note_timeout)
            time.sleep(self.faults.timeout_seconds)

    # ------------------------------------------------------------------ batch

    def _batch(self, req: Request, arrived: float) -> Response:
        try:
            parts = _parse_batch(req.headers.get("content-type", ""), req.body)
        except ValueError as exc:
            return ApiError(400, str(exc), "badRequest").response()
        if len(parts) > self.max_batch:
            message = f"Inner request count exceeds the limit. Received: {len(parts)}, Limit: {self.max_batch}"
            self._count(None, lambda c: c.errors.update(["batch_too_large"]))
            return ApiError(400, message, "badRequest").response()
        answers = [(content_id, self.call(inner, arrived_at=arrived)) for content_id, inner in parts]
        self._count_batch(parts)
        response = _batch_response(answers)
        response.rate_limits = [limit for _, answer in answers for limit in answer.rate_limits]
        return response

    def _count_batch(self, parts: Sequence[tuple[str, Request]]) -> None:
        per_user = Counter(self._token_email(inner) or "" for _, inner in parts)
        with self._stats_lock:
            for email, items in per_user.items():
                self._counters.setdefault(email, _Counters()).note_batch(items)

    # ------------------------------------------------------------------ OAuth token endpoint

    def _token(self, req: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type: " + form.get("grant_type", ""))
        if not form.get("client_id") or not form.get("client_secret"):
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        email = self._tokens.email_for_refresh(form.get("refresh_token", ""))
        if email is None or self.faults.invalid_grant:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        access = self._tokens.issue_access(email, self.faults.token_epoch)
        self._count(email, _Counters.note_refresh)
        return Response.json(200, {"access_token": access, "expires_in": int(self._tokens.lifetime),
                                   "token_type": "Bearer", "scope": DEFAULT_SCOPE})


def _oauth_error(status: int, error: str, description: str) -> Response:
    return Response.json(status, {"error": error, "error_description": description})


# ---------------------------------------------------------------------- API methods

_Handler_ = Callable[[GmailServer, FakeMailbox, dict[str, str], Request], Response]


def _get_profile(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    return Response.json(200, box.profile())


def _messages_list(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    label_ids = req.params("labelIds")
    for label in label_ids:
        if not box.has_label(label):
            raise _invalid(f"Invalid label: {label}")
    page = _mailbox_call(lambda: box.list_page(
        label_ids=label_ids, query=req.param("q", "") or "", include_spam_trash=_bool(req.param("includeSpamTrash")),
        page_token=req.param("pageToken") or None, max_results=_max_results(req, 100, 500)))
    body: dict[str, Any] = {}
    if page.messages:
        body["messages"] = page.messages
    if page.next_page_token:
        body["nextPageToken"] = page.next_page_token
    body["resultSizeEstimate"] = page.result_size_estimate
    return Response.json(200, body)


def _messages_get(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    fmt = _format(req, FORMATS)
    message_id = args["id"]
    if server.faults.take_delete_on_get(message_id):
        _mailbox_call(lambda: box.delete(message_id))
    msg = _mailbox_call(lambda: box.get(message_id))
    return Response.json(200, message_resource(msg, fmt, req.params("metadataHeaders"), box.content(msg)))


def _attachments_get(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    msg = _mailbox_call(lambda: box.get(args["mid"]))
    found = attachment_resource(msg, args["id"])
    if found is None:
        raise _invalid("Invalid attachment token")
    return Response.json(200, found)


def _threads_get(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    fmt = _format(req, ("minimal", "metadata", "full"))
    messages = _mailbox_call(lambda: box.thread(args["id"]))
    headers = req.params("metadataHeaders")
    body = {"id": args["id"], "historyId": str(max(m.history_id for m in messages)),
            "messages": [message_resource(m, fmt, headers, box.content(m)) for m in messages]}
    return Response.json(200, body)


def _history_list(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    start = req.param("startHistoryId")
    if not start or not start.isdigit():
        raise _invalid("Invalid startHistoryId" if start else "Missing required parameter: startHistoryId")
    types = req.params("historyTypes")
    for name in types:
        if name not in HISTORY_TYPES:
            raise _invalid(f"Invalid value at 'history_types' ({name})")
    label_id = req.param("labelId") or None
    if label_id is not None and not box.has_label(label_id):
        raise _invalid(f"Invalid label: {label_id}")
    page = _mailbox_call(lambda: box.history_page(int(start), label_id=label_id, history_types=types or None,
                                                  page_token=req.param("pageToken") or None,
                                                  max_results=_max_results(req, 100, 500)))
    body: dict[str, Any] = {}
    if page.records:
        body["history"] = page.records
    if page.next_page_token:
        body["nextPageToken"] = page.next_page_token
    body["historyId"] = str(page.history_id)
    return Response.json(200, body)


def _labels_list(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    return Response.json(200, {"labels": box.labels()})


def _watch(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError as exc:
        raise _invalid("Invalid JSON payload received.") from exc
    topic = body.get("topicName", "") if isinstance(body, dict) else ""
    if not re.fullmatch(r"projects/[^/]+/topics/[^/]+", topic or ""):
        raise _invalid("Invalid topicName does not match projects/SOME_PROJECT/topics/*")
    expiration = int((time.time() + WATCH_DAYS * 86400) * 1000)
    box.watch_state = {"topicName": topic, "labelIds": body.get("labelIds", []), "expiration": expiration}
    return Response.json(200, {"historyId": str(box.history_id), "expiration": str(expiration)})


def _stop(server: GmailServer, box: FakeMailbox, args: dict[str, str], req: Request) -> Response:
    box.watch_state = None
    return Response(204)


_HANDLERS: dict[str, _Handler_] = {
    "getProfile": _get_profile,
    "messages.list": _messages_list,
    "messages.get": _messages_get,
    "attachments.get": _attachments_get,
    "threads.get": _threads_get,
    "history.list": _history_list,
    "labels.list": _labels_list,
    "watch": _watch,
    "stop": _stop,
}


def _mailbox_call(make: Callable[[], Any]) -> Any:
    """Run a mailbox operation, turning its refusals into Gmail's answers."""
    try:
        return make()
    except (MessageNotFound, HistoryExpired) as exc:
        raise _not_found() from exc
    except InvalidArgument as exc:
        raise _invalid(str(exc)) from exc


def _format(req: Request, allowed: Sequence[str]) -> str:
    fmt = (req.param("format") or "full").lower()
    if fmt not in allowed:
        raise _invalid(f"Invalid value for format: {fmt}")
    return fmt


def _max_results(req: Request, default: int, ceiling: int) -> int:
    value = req.param("maxResults")
    if value is None:
        return default
    if not value.isdigit():
        raise _invalid(f"Invalid value for maxResults: {value}")
    return max(1, min(int(value), ceiling))  # Gmail clamps rather than refuses


def _bool(value: str | None) -> bool:
    return (value or "").lower() == "true"


# ---------------------------------------------------------------------- batch wire format


def _parse_batch(content_type: str, body: bytes) -> list[tuple[str, Request]]:
    """The (Content-ID, embedded request) parts of a multipart/mixed batch body."""
    if not content_type.lower().startswith("multipart/mixed"):
        raise ValueError("Batch requests must be multipart/mixed.")
    envelope = message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
                                  policy=compat32)
    payload = envelope.get_payload()
    if not envelope.is_multipart() or not isinstance(payload, list):
        raise ValueError("Failed to parse batch request, error: no parts.")
    parts: list[tuple[str, Request]] = []
    for part in payload:
        text = part.get_payload() if isinstance(part, Message) else None
        if not isinstance(part, Message) or not isinstance(text, str):
            raise ValueError("Failed to parse batch request, error: nested multipart part.")
        parts.append((str(part.get("Content-ID", "")), _parse_embedded(text)))
    return parts


def _parse_embedded(text: str) -> Request:
    """An application/http part: request line, headers, blank line, body."""
    head, body = _split_head(text.encode("utf-8", "surrogateescape").lstrip(b"\r\n"))
    lines = head.decode("latin-1").splitlines()
    try:
        verb, target = lines[0].split()[:2]
    except (IndexError, ValueError) as exc:
        raise ValueError("Failed to parse batch request, error: bad request line.") from exc
    headers = dict(_header_line(line) for line in lines[1:] if ":" in line)
    return Request.build(verb, target, headers, body)


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    found = re.search(rb"\r?\n\r?\n", raw)
    if found is None:
        return raw, b""
    return raw[:found.start()], raw[found.end():]


def _header_line(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def _batch_response(answers: Sequence[tuple[str, Response]]) -> Response:
    boundary = "batch_" + secrets.token_hex(12)
    chunks: list[bytes] = []
    for content_id, resp in answers:
        chunks.append(f"--{boundary}\r\nContent-Type: application/http\r\n"
                      f"Content-ID: {_response_id(content_id)}\r\n\r\n".encode())
        chunks.append(_http_bytes(resp))
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(200, b"".join(chunks), {"Content-Type": f"multipart/mixed; boundary={boundary}",
                                            "Vary": "Origin, X-Origin, Referer"})


def _response_id(content_id: str) -> str:
    # Gmail echoes `<x>` as `<response-x>`; the client finds its request id after the " + ".
    inner = content_id.strip()
    return f"<response-{inner[1:-1]}>" if inner.startswith("<") and inner.endswith(">") else f"response-{inner}"


def _http_bytes(resp: Response) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {_reason(resp.status)}"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    lines.append(f"Content-Length: {len(resp.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + resp.body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# ---------------------------------------------------------------------- HTTP plumbing


class _Handler(Handler):
    server_version = "ESF"

    def serve(self, body: bytes) -> None:
        gmail = cast(GmailServer, self.app)
        resp = gmail.handle(Request.build(self.command, self.path, dict(self.headers.items()), body),
                            arrived_at=self.arrived_at)
        gmail.deliver(resp, self.send)


# ---------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.testing.gmail_server",
                                     description="Serve a fake Gmail API over HTTP until SIGTERM/SIGINT.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mbox", type=Path, help="load this (Takeout) mbox")
    source.add_argument("--generate", type=int, metavar="N", help="generate N messages with bench.generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--email", default="me@example.com")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--regime", choices=("legacy", "2026", "none"), default="legacy")
    parser.add_argument("--per-user-per-minute", type=int, help="override the regime's per-user limit")
    parser.add_argument("--rate-status", type=int, choices=(429, 403), default=429)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every HTTP request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of calls answered 500/503")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    return parser.parse_args(argv)


def _regime(args: argparse.Namespace) -> QuotaRegime | None:
    if args.regime == "none":
        return None
    overrides: dict[str, Any] = {"rate_status": args.rate_status}
    if args.per_user_per_minute is not None:
        overrides["per_user_per_minute"] = args.per_user_per_minute
    return QuotaRegime.legacy(**overrides) if args.regime == "legacy" else QuotaRegime.y2026(**overrides)


def _mailbox(args: argparse.Namespace) -> FakeMailbox:
    if args.mbox is not None:
        return FakeMailbox.from_mbox(args.email, args.mbox, seed=args.seed)
    if args.generate is not None:
        return FakeMailbox.from_generated(args.email, args.generate, seed=args.seed)
    return FakeMailbox(args.email, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    faults = Faults(latency=args.latency, error_rate=args.error_rate, seed=args.seed)
    server = GmailServer(_mailbox(args), quota=_regime(args), faults=faults, host=args.host, port=args.port,
                         max_batch=args.max_batch)
    return serve_until_signal(server, lambda: {
        "base_url": server.base_url, "token_uri": server.token_uri, "batch_uri": server.batch_uri,
        "email": args.email, "refresh_token": server.issue_refresh_token(args.email),
        "client_id": "fake-client-id", "client_secret": "fake-client-secret"})


__all__ = ["ApiError", "Faults", "GmailServer", "QuotaLedger", "QuotaRegime", "Request", "Response", "main"]


if __name__ == "__main__":
    sys.exit(main())
