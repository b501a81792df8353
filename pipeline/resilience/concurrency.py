"""Adaptive AI concurrency: how many AI calls may be in flight at once, across every worker.

An AI endpoint that errs under load gets fewer concurrent calls; one that answers well gets more. The
limit moves with the error rate of the recent calls (`next_limit`, pure): above 15% it is halved (never
below 1), under 5% it grows by one (never above the maximum), in between it holds. After each move the
record starts afresh, so the next move is judged on calls made under the new limit (as TCP judges one
window per round trip), and a burst of errors halves the limit once, not once per error.

`RedisConcurrencyLimiter` (where there is Redis: `shared_redis_url`) is global: slots are members of a
sorted set scored by their lease's end on Redis's clock, so a killed worker's slot frees itself when its
lease runs out; the limit and the record of recent outcomes live next to it.

Without Redis (the embedded default) `LocalConcurrencyLimiter` is per process: the same rules, but each
worker process has its own limit, so the endpoint may see up to (processes × limit) calls. The embedded
default runs the local MiniLM and rule-based insights, which make no remote AI calls; a deployment that
points at a remote AI endpoint and needs a global limit configures Redis.

    limiter = limiter_for(settings)
    with limiter.slot(timeout=60):      # a call that may outlast the lease calls slot.renew() meanwhile
        ok = call_the_endpoint()
    limiter.record(ok)
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from pipeline.resilience.classify import RATE_LIMIT, TIMEOUT, TRANSIENT, ClassifiedError, classify
from pipeline.resilience.shared_redis import shared_redis_client, shared_redis_url
from pipeline.settings import Settings

T = TypeVar("T")

REDIS_PREFIX = "mailpipe:concurrency:"
STATE_IDLE_SECONDS = 86_400  # an unused limiter's limit and record are forgotten after a day


@dataclass(frozen=True, slots=True)
class ConcurrencyPolicy:
    """The limiter's rules as data.

    window_calls: the most recent calls the error rate is taken over; window_seconds: older calls are
    forgotten; min_samples: fewer calls than this (since the last move) decide nothing.
    """

    max_limit: int = 4
    min_limit: int = 1
    initial: int | None = None  # None: start at max_limit
    shrink_above: float = 0.15
    grow_below: float = 0.05
    shrink_factor: float = 0.5
    grow_step: int = 1
    window_calls: int = 20
    window_seconds: float = 300.0
    min_samples: int = 10
    lease_seconds: float = 120.0  # longer than any one AI call; a dead worker's slot is free after this

    def __post_init__(self) -> None:
        if not (1 <= self.min_limit <= self.max_limit and 0 <= self.grow_below <= self.shrink_above <= 1
                and 0 < self.shrink_factor < 1 and self.grow_step >= 1 and 1 <= self.min_samples <= self.window_calls
                and self.window_seconds > 0 and self.lease_seconds > 0):
            raise ValueError(f"invalid concurrency policy: {self}")
        if self.initial is not None and not self.min_limit <= self.initial <= self.max_limit:
            raise ValueError(f"initial limit {self.initial} outside [{self.min_limit}, {self.max_limit}]")

    @property
    def start(self) -> int:
        return self.max_limit if self.initial is None else self.initial


def next_limit(current: int, error_rate: float, policy: ConcurrencyPolicy) -> int:
    """The concurrency limit after observing `error_rate` (0..1) over the recent calls (pure)."""
    current = min(policy.max_limit, max(policy.min_limit, current))
    if error_rate > policy.shrink_above:
        return max(policy.min_limit, math.floor(current * policy.shrink_factor))
    if error_rate < policy.grow_below:
        return min(policy.max_limit, current + policy.grow_step)
    return current


def error_rate(outcomes: Sequence[bool]) -> float:
    """Share of failures among outcomes (True = success); 0 for none."""
    return 0.0 if not outcomes else sum(1 for ok in outcomes if not ok) / len(outcomes)


def decide(current: int, outcomes: Sequence[bool], policy: ConcurrencyPolicy) -> int:
    """The limit the record of outcomes since the last move calls for; unchanged with too few samples."""
    if len(outcomes) < policy.min_samples:
        return current
    return next_limit(current, error_rate(outcomes), policy)


def counts_as_error(exc: BaseException) -> bool:
    """Errors that say the endpoint is struggling: transient, timeout, rate limit. A 400 is our request."""
    return classify(exc) in (TRANSIENT, TIMEOUT, RATE_LIMIT)


class SlotWaitTimeout(ClassifiedError):
    """No slot freed up within the caller's timeout; retry later (transient)."""

    error_class = TRANSIENT

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(f"no {name!r} concurrency slot free within {timeout:.1f} s", TRANSIENT)
        self.name, self.timeout = name, timeout


class Slot:
    """A held slot. `renew()` extends its lease (global limiter) for a call that may outlast it."""

    def __init__(self, limiter: ConcurrencyLimiter, token: str) -> None:
        self.limiter, self.token = limiter, token

    def renew(self) -> bool:
        """False when the lease had already run out (the slot may have been handed to another call)."""
        return self.limiter._renew(self.token)


@dataclass(frozen=True, slots=True)
class ConcurrencySnapshot:
    name: str
    limit: int
    in_use: int
    error_rate: float  # over the calls recorded since the last move
    samples: int
    shared: bool  # True: across all workers (Redis); False: this process only


class ConcurrencyLimiter(ABC):
    def __init__(self, name: str, policy: ConcurrencyPolicy) -> None:
        self.name = name
        self.policy = policy

    @contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[Slot]:
        """Hold one slot while the block runs; raise SlotWaitTimeout if none frees up within `timeout` s."""
        token = self._acquire(timeout)
        try:
            yield Slot(self, token)
        finally:
            self._release(token)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any) -> T:
        """fn in a slot, its outcome recorded (errors per `counts_as_error`; others count as answers)."""
        with self.slot(timeout):
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.record(not counts_as_error(exc))
                raise
        self.record(True)
        return result

    @abstractmethod
    def record(self, success: bool) -> int:
        """Add one call's outcome; move the limit if the record calls for it. Returns the limit now."""

    @abstractmethod
    def snapshot(self) -> ConcurrencySnapshot: ...

    @abstractmethod
    def _acquire(self, timeout: float | None) -> str: ...

    @abstractmethod
    def _release(self, token: str) -> None: ...

    def _renew(self, token: str) -> bool:
        return True


# ---------------------------------------------------------------- Redis: global

# KEYS[1] slots (zset token -> lease end), KEYS[2] state hash; ARGV token, lease seconds, initial limit.
# Drops expired leases, then takes a slot if fewer than the limit are held. Returns 1 taken, 0 full.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[2])), ARGV[1])
  return 1
end
return 0
"""

# KEYS[1] slots; ARGV token, lease seconds. Extends a lease still held; 0 if it had run out.
_RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not score or score <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', now + tonumber(ARGV[2])), ARGV[1])
return 1
"""

# KEYS[1] calls (list, newest first, "<epoch s>|<1 ok, 0 error>"), KEYS[2] state; ARGV outcome, window
# calls, initial limit, idle ms. Returns {now, limit, epoch, {calls...}}.
_RECORD_LUA = """
local t = redis.call('TIME')
local now = string.format('%.17g', tonumber(t[1]) + tonumber(t[2]) / 1000000)
redis.call('LPUSH', KEYS[1], now .. '|' .. ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
local limit = redis.call('HGET', KEYS[2], 'limit') or ARGV[3]
local epoch = redis.call('HGET', KEYS[2], 'epoch') or '0'
return {now, limit, epoch, redis.call('LRANGE', KEYS[1], 0, -1)}
"""

# KEYS[1] calls, KEYS[2] state; ARGV expected epoch, new limit, idle ms. Moves the limit only if no one
# moved it since the caller read the record (compare-and-set), and starts a fresh record.
_MOVE_LUA = """
local epoch = redis.call('HGET', KEYS[2], 'epoch') or '0'
if epoch ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'limit', ARGV[2], 'epoch', tostring(tonumber(epoch) + 1))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1] slots, KEYS[2] calls, KEYS[3] state; ARGV initial limit. Returns {now, limit, in use, {calls}}.
_READ_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local used = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.17g', now), '+inf')
local limit = redis.call('HGET', KEYS[3], 'limit') or ARGV[1]
return {string.format('%.17g', now), limit, used, redis.call('LRANGE', KEYS[2], 0, -1)}
"""


def _recent(entries: Sequence[bytes | str], now: float, window_seconds: float) -> list[bool]:
    outcomes = []
    for entry in entries:
        stamp, _, ok = (entry.decode() if isinstance(entry, bytes) else entry).partition("|")
        if now - float(stamp) <= window_seconds:
            outcomes.append(ok == "1")
    return outcomes


class RedisConcurrencyLimiter(ConcurrencyLimiter):
    """Slots, limit and record in Redis: one limit for every worker process on every host."""

    def __init__(self, client: redis.Redis, name: str = "ai", policy: ConcurrencyPolicy | None = None, *,
                 prefix: str = REDIS_PREFIX, poll_seconds: float = 0.05) -> None:
        super().__init__(name, policy or ConcurrencyPolicy())
        self.client = client
        self.poll_seconds = poll_seconds
        base = prefix + name
        self._slots, self._calls, self._state = base + ":slots", base + ":calls", base + ":state"
        self._acquire_script = client.register_script(_ACQUIRE_LUA)
        self._record_script = client.register_script(_RECORD_LUA)
        self._move_script = client.register_script(_MOVE_LUA)
        self._read_script = client.register_script(_READ_LUA)
        self._renew_script = client.register_script(_RENEW_LUA)

    def _acquire(self, timeout: float | None) -> str:
        token = uuid.uuid4().hex
        start = time.monotonic()
        delay = self.poll_seconds
        args: list[str | int] = [token, repr(self.policy.lease_seconds), self.policy.start]
        while not self._acquire_script(keys=[self._slots, self._state], args=args):
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise SlotWaitTimeout(self.name, timeout)
            pause = delay * random.uniform(0.5, 1.0)  # jitter: waiters do not all retry at the same instant
            if timeout is not None:
                pause = min(pause, max(0.0, timeout - waited))
            time.sleep(pause)
            delay = min(delay * 1.5, 0.5)
        return token

    def _release(self, token: str) -> None:
        self.client.zrem(self._slots, token)

    def _renew(self, token: str) -> bool:
        return bool(self._renew_script(keys=[self._slots], args=[token, repr(self.policy.lease_seconds)]))

    def record(self, success: bool) -> int:
        idle_ms = STATE_IDLE_SECONDS * 1000
        now, limit, epoch, entries = self._record_script(
            keys=[self._calls, self._state], args=["1" if success else "0", self.policy.window_calls,
                                                   self.policy.start, idle_ms])
        current = int(limit)
        outcomes = _recent(entries, float(now), self.policy.window_seconds)
        target = decide(current, outcomes, self.policy)
        if target != current and self._move_script(keys=[self._calls, self._state],
                                                    args=[_text(epoch), target, idle_ms]):
            return target
        return current

    def snapshot(self) -> ConcurrencySnapshot:
        now, limit, used, entries = self._read_script(keys=[self._slots, self._calls, self._state],
                                                      args=[self.policy.start])
        outcomes = _recent(entries, float(now), self.policy.window_seconds)
        return ConcurrencySnapshot(self.name, int(limit), int(used), error_rate(outcomes), len(outcomes), True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- per process


class LocalConcurrencyLimiter(ConcurrencyLimiter):
    """The same rules in this process's memory (no Redis): threads of one process share it, processes
    do not. A process that dies takes its slots with it, so no lease is needed."""

    def __init__(self, name: str = "ai", policy: ConcurrencyPolicy | None = None) -> None:
        super().__init__(name, policy or ConcurrencyPolicy())
        self._cond = threading.Condition()
        self._limit = self.policy.start
        self._in_use = 0
        self._calls: deque[tuple[float, bool]] = deque(maxlen=self.policy.window_calls)

    def _acquire(self, timeout: float | None) -> str:
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_use < self._limit, timeout):
                raise SlotWaitTimeout(self.name, timeout or 0.0)
            self._in_use += 1
        return ""

    def _release(self, token: str) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify()

    def record(self, success: bool) -> int:
        now = time.monotonic()
        with self._cond:
            self._calls.append((now, success))
            target = decide(self._limit, self._outcomes(now), self.policy)
            if target != self._limit:
                self._limit = target
                self._calls.clear()
                self._cond.notify_all()
            return self._limit

    def snapshot(self) -> ConcurrencySnapshot:
        with self._cond:
            outcomes = self._outcomes(time.monotonic())
            return ConcurrencySnapshot(self.name, self._limit, self._in_use, error_rate(outcomes), len(outcomes),
                                       False)

    def _outcomes(self, now: float) -> list[bool]:
        return [ok for at, ok in self._calls if now - at <= self.policy.window_seconds]


# ---------------------------------------------------------------- choosing one

_cache_lock = threading.Lock()
_cache: dict[tuple[str | None, str, ConcurrencyPolicy], ConcurrencyLimiter] = {}


def limiter_for(settings: Settings, name: str = "ai", policy: ConcurrencyPolicy | None = None) -> ConcurrencyLimiter:
    """The limiter for `name`: global on Redis when there is one, else this process's (one per process)."""
    policy = policy or ConcurrencyPolicy(max_limit=settings.ai_concurrency_max)
    url = shared_redis_url(settings)
    with _cache_lock:
        limiter = _cache.get((url, name, policy))
        if limiter is None:
            if url is None:
                limiter = LocalConcurrencyLimiter(name, policy)
            else:
                limiter = RedisConcurrencyLimiter(shared_redis_client(url), name, policy)
            _cache[(url, name, policy)] = limiter
        return limiter
