"""Circuit breakers, one per external dependency ("gmail", "ai:<endpoint host>"), shared by every worker.

A dependency that keeps failing is not called for `breaker_reset_seconds`: every worker sees the breaker
open at once, because its state lives in Redis (pybreaker's `CircuitRedisStorage`) or, where there is no
Redis (the embedded default), in the `circuit_breakers` table (`CircuitPostgresStorage`). After the reset
timeout exactly one worker makes a trial call (a probe lease, held across processes, stops the others
from all probing at once); its success closes the breaker, its failure re-opens it.

Only outages count: an exception opens the breaker only when `classify()` says transient or timeout. A 404
or a bad request is the dependency answering; a rate limit is the quota budget's business (AIMD in
quota.py). Such answers count as successes, as pybreaker counts excluded errors.

Callers: a refused call raises `BreakerOpenError`, a `ClassifiedError` of class transient carrying
`retry_after`, the seconds until the breaker will let a probe through. Check `isinstance(exc,
BreakerOpenError)` *before* applying the transient class's backoff, and re-schedule with `retry_after`
instead: the class's backoff knows nothing of the breaker's clock. The call that trips the breaker raises
its own exception, not BreakerOpenError.

Clocks: pybreaker compares `opened_at` with the local clock of the worker that asks (and the Redis
storage keeps it to the whole second), so worker clocks should be NTP-synced; a skew of s seconds moves
a reset by s.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pybreaker
import redis
from sqlalchemy import Engine, Float, cast, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError

from pipeline.resilience.classify import TIMEOUT, TRANSIENT, ClassifiedError, classify, is_interruption
from pipeline.resilience.shared_redis import shared_redis_client, shared_redis_url
from pipeline.settings import Settings
from pipeline.storage.models import CircuitBreakerRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

GMAIL = "gmail"
CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
REDIS_PREFIX = "mailpipe:breaker:"
# How long one worker's trial call may hold a half-open breaker before another may probe (it is released
# as soon as the call returns; the lease only matters when the prober dies). Longer than any one call.
PROBE_LEASE_SECONDS = 120.0


def ai_breaker_name(endpoint_url: str) -> str:
    """The breaker of an OpenAI-compatible endpoint: "ai:" + its host (and port), one per server."""
    parts = urlsplit(endpoint_url if "//" in endpoint_url else "//" + endpoint_url)
    return "ai:" + (parts.netloc or parts.path).lower().rsplit("@", 1)[-1]


def counts_as_failure(exc: BaseException) -> bool:
    """Whether an exception is evidence of an outage: transient or timeout, and neither our own refusal
    nor our own interruption (a task stopped at its soft time limit says nothing about the endpoint)."""
    if isinstance(exc, BreakerOpenError) or is_interruption(exc):
        return False
    return classify(exc) in (TRANSIENT, TIMEOUT)


class BreakerOpenError(ClassifiedError):
    """The dependency's breaker is open: the call was not made. Re-schedule after `retry_after` seconds."""

    error_class = TRANSIENT

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(f"circuit breaker {name!r} is open; retry in {self.retry_after:.1f} s", TRANSIENT)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One breaker as `mailpipe status` shows it."""

    name: str
    state: str  # closed | open | half-open
    failures: int  # consecutive failures counted (while closed)
    opened_at: datetime | None
    retry_after: float  # seconds until an open breaker lets a probe through; 0 otherwise


# ---------------------------------------------------------------- stores: pybreaker storage + probe lease


class BreakerStore:
    """Where breakers keep their state: makes pybreaker storages and holds the cross-process probe lease."""

    def storage(self, name: str) -> pybreaker.CircuitBreakerStorage:
        raise NotImplementedError

    def claim_probe(self, name: str, lease_seconds: float) -> str | None:
        """Take the right to make the half-open trial call: a token to release it with, or None when another
        worker holds it."""
        raise NotImplementedError

    def release_probe(self, name: str, token: str) -> None:
        """Give the right back, unless the lease ran out and another worker holds it now."""
        raise NotImplementedError

    def records(self) -> list[tuple[str, str, int, datetime | None]]:
        """(name, state, fail counter, opened_at) of every breaker the store knows."""
        raise NotImplementedError


class RedisBreakerStore(BreakerStore):
    """pybreaker's own Redis storage, one namespace per breaker; the probe lease is a `SET NX PX` key.

    The client must not decode responses: pybreaker decodes the bytes itself.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = REDIS_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def storage(self, name: str) -> pybreaker.CircuitBreakerStorage:
        return pybreaker.CircuitRedisStorage(CLOSED, self.client, namespace=self.prefix + name)

    def claim_probe(self, name: str, lease_seconds: float) -> str | None:
        token = uuid.uuid4().hex
        try:
            claimed = self.client.set(self._probe_key(name), token, nx=True, px=max(1, int(lease_seconds * 1000)))
        except redis.RedisError:
            log.exception("breaker %s: Redis failed; letting the probe through", name)
            return ""
        return token if claimed else None

    def release_probe(self, name: str, token: str) -> None:
        try:
            self.client.eval(_RELEASE_LUA, 1, self._probe_key(name), token)
        except redis.RedisError:
            log.exception("breaker %s: Redis failed releasing the probe (its lease will expire)", name)

    def records(self) -> list[tuple[str, str, int, datetime | None]]:
        suffix = ":pybreaker:state"
        out = []
        for raw_key in self.client.scan_iter(match=self.prefix + "*" + suffix, count=500):
            namespace = _text(raw_key)[: -len(suffix)]
            state, fails, opened = (_text(v) for v in self.client.mget(
                namespace + suffix, namespace + ":pybreaker:fail_counter", namespace + ":pybreaker:opened_at"
            ))
            opened_at = datetime.fromtimestamp(int(opened), UTC) if opened else None
            out.append((namespace[len(self.prefix):], state or CLOSED, int(fails or 0), opened_at))
        return out

    def _probe_key(self, name: str) -> str:
        return f"{self.prefix}{name}:probe"


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


# KEYS[1] probe key; ARGV[1] the holder's token. Deletes the key only if that holder still has it.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_B = CircuitBreakerRecord
_DB_NOW = cast(func.extract("epoch", func.clock_timestamp()), Float)


class CircuitPostgresStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage interface on one `circuit_breakers` row; each change is one atomic statement.

    Like pybreaker's Redis storage, a database error is logged and read as "closed, no failures": a
    breaker that cannot reach its state lets calls through rather than stopping the pipeline.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        super().__init__(name)
        self.engine = engine
        self._ensure_row()

    @property
    def state(self) -> str:
        value = self._read(_B.state)
        if value is None:
            self._ensure_row()
            return CLOSED
        return str(value)

    @state.setter
    def state(self, state: str) -> None:
        self._upsert({"state": str(state)}, {"state": str(state)})

    def increment_counter(self) -> None:
        self._upsert({"fail_counter": 1}, {"fail_counter": _B.fail_counter + 1})

    def reset_counter(self) -> None:
        # Called after every success: only write when there is something to reset.
        self._update(_B.fail_counter != 0, fail_counter=0)

    def increment_success_counter(self) -> None:
        self._upsert({"success_counter": 1}, {"success_counter": _B.success_counter + 1})

    def reset_success_counter(self) -> None:
        self._update(_B.success_counter != 0, success_counter=0)

    @property
    def counter(self) -> int:
        return int(self._read(_B.fail_counter) or 0)

    @property
    def success_counter(self) -> int:
        return int(self._read(_B.success_counter) or 0)

    @property
    def opened_at(self) -> datetime | None:
        value = self._read(_B.opened_at)
        return value if isinstance(value, datetime) else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        # Only forward, as pybreaker's Redis storage: concurrent openers keep the latest time.
        self._upsert({"opened_at": now}, {"opened_at": func.greatest(func.coalesce(_B.opened_at, now), now)})

    def claim_probe(self, lease_seconds: float) -> str | None:
        """One UPDATE ... RETURNING: the first worker whose statement finds the lease expired takes it. The
        token is the lease's end, which is what a release must still find to clear it."""
        self._ensure_row()
        try:
            with self.engine.begin() as conn:
                until = conn.execute(
                    update(_B).where(_B.name == self.name, _B.probe_until <= _DB_NOW)
                    .values(probe_until=_DB_NOW + lease_seconds).returning(_B.probe_until)
                ).scalar_one_or_none()
        except SQLAlchemyError:
            log.exception("breaker %s: database failed; letting the probe through", self.name)
            return ""
        return None if until is None else repr(float(until))

    def release_probe(self, token: str) -> None:
        if token:
            self._update(_B.probe_until == float(token), probe_until=0.0)

    # -- plumbing

    def _ensure_row(self) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(pg_insert(_B).values(name=self.name).on_conflict_do_nothing(index_elements=["name"]))
        except SQLAlchemyError:
            log.exception("breaker %s: database failed creating its row", self.name)

    def _read(self, column: Any) -> Any:
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(column).where(_B.name == self.name)).scalar_one_or_none()
        except SQLAlchemyError:
            log.exception("breaker %s: database failed; assuming closed", self.name)
            return None

    def _upsert(self, insert: dict[str, Any], changes: dict[str, Any]) -> None:
        # INSERT ... ON CONFLICT DO UPDATE: one statement, atomic under concurrent workers; `changes` may
        # name the existing row's columns (fail_counter + 1), `insert` is what a missing row starts with.
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    pg_insert(_B).values(name=self.name, **insert)
                    .on_conflict_do_update(index_elements=["name"], set_=changes)
                )
        except SQLAlchemyError:
            log.exception("breaker %s: database failed updating %s", self.name, sorted(changes))

    def _update(self, where: Any, **values: Any) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(update(_B).where(_B.name == self.name, where).values(**values))
        except SQLAlchemyError:
            log.exception("breaker %s: database failed updating %s", self.name, sorted(values))


class PostgresBreakerStore(BreakerStore):
    """Breakers in the `circuit_breakers` table, for deployments without Redis."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._storages: dict[str, CircuitPostgresStorage] = {}

    def storage(self, name: str) -> CircuitPostgresStorage:
        if name not in self._storages:
            self._storages[name] = CircuitPostgresStorage(self.engine, name)
        return self._storages[name]

    def claim_probe(self, name: str, lease_seconds: float) -> str | None:
        return self.storage(name).claim_probe(lease_seconds)

    def release_probe(self, name: str, token: str) -> None:
        self.storage(name).release_probe(token)

    def records(self) -> list[tuple[str, str, int, datetime | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_B.name, _B.state, _B.fail_counter, _B.opened_at).order_by(_B.name)).all()
        return [(r.name, r.state, r.fail_counter, r.opened_at) for r in rows]


# ---------------------------------------------------------------- breakers


class Breaker:
    """One dependency's breaker: pybreaker's state machine on a shared store, plus the probe lease."""

    def __init__(self, name: str, store: BreakerStore, *, fail_max: int, reset_seconds: float,
                 probe_lease_seconds: float = PROBE_LEASE_SECONDS) -> None:
        self.name = name
        self.store = store
        self.reset_seconds = float(reset_seconds)
        self.probe_lease_seconds = float(probe_lease_seconds)
        self._storage = store.storage(name)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_seconds,
            exclude=[lambda exc: not counts_as_failure(exc)],
            state_storage=self._storage,
            name=name,
            # The call that trips the breaker raises its own error (transient, retried with backoff);
            # only calls that were not made raise BreakerOpenError.
            throw_new_error_on_trip=False,
        )

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block as one call through the breaker; raises BreakerOpenError instead when open.

        pybreaker's `calling()` does not hold its lock while the block runs, so threads are not serialized.
        """
        state = self._storage.state
        token: str | None = None
        if state == OPEN:
            wait = self._remaining(self._storage.opened_at)
            if wait > 0:
                raise BreakerOpenError(self.name, wait)
        if state in (OPEN, HALF_OPEN):
            token = self.store.claim_probe(self.name, self.probe_lease_seconds)
            if token is None:
                # Another worker is probing; its answer will be in soon.
                raise BreakerOpenError(self.name, self._probe_retry())
        try:
            with self._cb.calling():
                yield
        except pybreaker.CircuitBreakerError as exc:  # it opened between our look and pybreaker's
            raise BreakerOpenError(self.name, self.retry_after() or self._probe_retry()) from exc
        finally:
            if token is not None:
                self.store.release_probe(self.name, token)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self.guard():
            return fn(*args, **kwargs)

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now, or is not open)."""
        if self._storage.state != OPEN:
            return 0.0
        return self._remaining(self._storage.opened_at)

    def snapshot(self) -> BreakerState:
        state = self._storage.state
        return BreakerState(self.name, state, self._storage.counter, self._storage.opened_at, self.retry_after())

    def _remaining(self, opened_at: datetime | None) -> float:
        # The same arithmetic as pybreaker's open state, so a retry at `retry_after` finds the probe allowed.
        if opened_at is None:
            return 0.0
        return max(0.0, opened_at.timestamp() + self.reset_seconds - time.time())

    def _probe_retry(self) -> float:
        return max(1.0, self.reset_seconds / 6)


class Breakers:
    """Every dependency's breaker, made on first use; the object a stage wraps its external calls with.

        breakers.call("gmail", request.execute)
        with breakers.guard(ai_breaker_name(url)):
            response = client.embeddings.create(...)
    """

    def __init__(self, store: BreakerStore, *, fail_max: int, reset_seconds: float,
                 probe_lease_seconds: float = PROBE_LEASE_SECONDS) -> None:
        self.store = store
        self.fail_max = fail_max
        self.reset_seconds = reset_seconds
        self.probe_lease_seconds = probe_lease_seconds
        self._lock = threading.Lock()
        self._breakers: dict[str, Breaker] = {}

    def get(self, name: str) -> Breaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = Breaker(name, self.store, fail_max=self.fail_max, reset_seconds=self.reset_seconds,
                                  probe_lease_seconds=self.probe_lease_seconds)
                self._breakers[name] = breaker
            return breaker

    def call(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.get(name).call(fn, *args, **kwargs)

    @contextmanager
    def guard(self, name: str) -> Iterator[None]:
        with self.get(name).guard():
            yield

    def states(self, known: Sequence[str] = ()) -> list[BreakerState]:
        """The stored breakers, and the `known` ones never stored yet as closed with no failure."""
        now = time.time()
        out = []
        records = {r[0]: r for r in self.store.records()}
        for name in known:
            records.setdefault(name, (name, CLOSED, 0, None))
        for name, state, failures, opened_at in sorted(records.values()):
            wait = 0.0
            if state == OPEN and opened_at is not None:
                wait = max(0.0, opened_at.timestamp() + self.reset_seconds - now)
            out.append(BreakerState(name, state, failures, opened_at, wait))
        return out


_cache_lock = threading.Lock()
_cache: dict[tuple[Any, ...], Breakers] = {}


def breakers_for(settings: Settings, engine: Engine) -> Breakers:
    """The process's breakers: on Redis when there is one (`shared_redis_url`), else on PostgreSQL."""
    url = shared_redis_url(settings)
    key = (url or engine, settings.breaker_fail_max, settings.breaker_reset_seconds)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            return found
        store: BreakerStore = (
            PostgresBreakerStore(engine) if url is None else RedisBreakerStore(shared_redis_client(url))
        )
        breakers = Breakers(store, fail_max=settings.breaker_fail_max, reset_seconds=settings.breaker_reset_seconds)
        _cache[key] = breakers
        return breakers


def breaker_states(settings: Settings, engine: Engine) -> list[BreakerState]:
    """Every breaker the shared store knows, by name, for `mailpipe status` and /metrics: Gmail's and the
    configured AI endpoint's always (closed until first used), so an alert on them has a series to watch."""
    known = [GMAIL] + ([ai_breaker_name(settings.ai_base_url)] if settings.ai_base_url else [])
    return breakers_for(settings, engine).states(known)

