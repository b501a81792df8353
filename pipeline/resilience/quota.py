"""A per-account Gmail quota budget shared by every worker (DESIGN.md §3, §4).

Gmail limits units per user per minute and Celery's `rate_limit` is per worker, so every worker of an
account spends from one token bucket kept in Redis (or in PostgreSQL when there is no Redis). The
bucket's clock is the server's, never a worker's: workers' clocks differ. A 429 pauses the whole
account at once, because the limit is the account's, not the worker's.

The refill rate adapts (AIMD, as TCP does): each rate-limit answer halves the share of the rate a bucket
refills at, down to a floor; each success adds a small step back toward the full rate. The factor lives
with the bucket, so every worker of the account slows down and recovers together.
"""

from __future__ import annotations

import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

import redis
from sqlalchemy import Engine, Row, cast, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.types import Float

from pipeline.errors import ConfigError, MailpipeError
from pipeline.resilience.shared_redis import shared_redis_client, shared_redis_url
from pipeline.settings import Settings
from pipeline.storage.models import QuotaBucket

# Units per call (DESIGN.md §3). threads.get's 2026 cost was not published where we looked: the legacy
# value is assumed, and a 429 pause corrects an underestimate.
_LEGACY_COSTS: dict[str, int] = {
    "messages.get": 5,
    "messages.list": 5,
    "history.list": 2,
    "getProfile": 1,
    "threads.get": 10,
    "labels.list": 1,
    "watch": 100,
    "stop": 50,
    "attachments.get": 5,
}
_Y2026_COSTS: dict[str, int] = {**_LEGACY_COSTS, "messages.get": 20, "attachments.get": 20}

IDLE_EXPIRY_SECONDS = 3600.0
# Added to every computed wait: a sleep of exactly the computed time can land a hair short of the
# tokens after float rounding, which would cost a second round trip.
_WAKE_MARGIN = 0.0005


class QuotaWaitTimeout(MailpipeError):
    """Taking the units would mean waiting longer than the caller allowed."""

    def __init__(self, key: str, units: int, wait: float, timeout: float) -> None:
        super().__init__(
            f"quota for {key!r}: {units} units need {wait:.3f} s more, over the {timeout:.3f} s allowed"
        )
        self.key, self.units, self.wait, self.timeout = key, units, wait, timeout


@dataclass(frozen=True)
class CostTable:
    """A quota regime as data: the per-user limit and what each Gmail method costs."""

    per_user_per_minute: int
    costs: Mapping[str, int] = field(default_factory=dict)

    def cost(self, method: str) -> int:
        try:
            return self.costs[method]
        except KeyError:
            raise ValueError(f"no quota cost known for Gmail method {method!r}; known: {sorted(self.costs)}") from None

    @classmethod
    def legacy(cls) -> CostTable:
        return cls(15_000, MappingProxyType(dict(_LEGACY_COSTS)))

    @classmethod
    def y2026(cls) -> CostTable:
        return cls(6_000, MappingProxyType(dict(_Y2026_COSTS)))

    @classmethod
    def for_regime(cls, name: str, per_minute_override: int | None = None) -> CostTable:
        makers = {"legacy": cls.legacy, "2026": cls.y2026}
        maker = makers.get(name)
        if maker is None:
            raise ConfigError(f"unknown Gmail quota regime {name!r} (MAILPIPE_GMAIL_REGIME); valid: {sorted(makers)}")
        table = maker()
        if per_minute_override is not None:
            table = cls(per_minute_override, table.costs)
        return table


@dataclass(frozen=True, slots=True)
class BucketState:
    """What a bucket holds now (tokens after refill), until when its account is paused (epoch s), and the
    share of the configured rate it refills at (AIMD; 1.0 unless the server has been refusing calls).

    `used_last_minute`: units taken in the last 60 s, for status and metrics (Redis buckets count them per
    minute; the sliding minute is estimated from this minute's and the previous one's, weighted by the part
    of the previous one still inside it). None where it is not counted (the PostgreSQL bucket).
    """

    tokens: float
    paused_until: float
    rate_factor: float = 1.0
    used_last_minute: float | None = None


def sliding_minute_usage(minute: int, used: float, used_prev: float, now: float) -> float:
    """Units in the 60 s before `now`, from per-minute counts (`used` in `minute`, `used_prev` in the one
    before): the current minute's count plus the previous one's share still inside the window."""
    current = int(now // 60)
    overlap = 1.0 - (now % 60) / 60.0  # the part of the previous calendar minute inside the last 60 s
    if minute == current:
        return used + used_prev * overlap
    if minute == current - 1:
        return used * overlap
    return 0.0


RateEvent = Literal["success", "rate_limited"]


@dataclass(frozen=True, slots=True)
class AimdPolicy:
    """How the refill rate adapts to rate-limit answers: additive increase, multiplicative decrease.

    `decrease_cooldown_seconds`: rate-limit answers within this long after a decrease belong to the same
    episode (every worker's in-flight call sees the same 429) and do not compound it.
    """

    decrease: float = 0.5
    increase: float = 0.02
    floor: float = 0.05
    decrease_cooldown_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.decrease < 1 and 0 < self.floor <= 1 and self.increase >= 0
                and self.decrease_cooldown_seconds >= 0):
            raise ValueError(f"invalid AIMD policy: {self}")


def next_rate_factor(current: float, event: RateEvent, policy: AimdPolicy) -> float:
    """The refill factor after one event, in [policy.floor, 1.0]. Mirrored by _ADAPT_LUA."""
    if event == "rate_limited":
        return max(policy.floor, current * policy.decrease)
    if event == "success":
        return min(1.0, current + policy.increase)
    raise ValueError(f"unknown rate event {event!r}; valid: 'success', 'rate_limited'")


class QuotaBudget(Protocol):
    capacity: float  # the most units one acquire may ask for: callers split larger batches

    def acquire(self, key: str, units: int, *, timeout: float | None = None) -> float: ...

    def refund(self, key: str, units: int) -> None: ...

    def pause(self, key: str, until_epoch: float) -> None: ...

    def paused_until(self, key: str) -> float: ...

    def snapshot(self, key: str) -> BucketState: ...

    def adapt_rate(self, key: str, event: RateEvent) -> float: ...


# ---------------------------------------------------------------- the bucket arithmetic


@dataclass(frozen=True, slots=True)
class _Step:
    tokens: float
    updated_at: float
    wait: float  # 0: the units were taken


def _refill(tokens: float, updated_at: float, now: float, rate: float, capacity: float) -> tuple[float, float]:
    # A pause sets updated_at to its end, so nothing accrues until then: the bucket restarts empty.
    if now <= updated_at:
        return tokens, updated_at
    return min(capacity, tokens + (now - updated_at) * rate), now


def _step(state: BucketState, updated_at: float, now: float, units: int, rate: float, capacity: float) -> _Step:
    """Refill, then take `units` or say how long until they will be there. Mirrored by _TAKE_LUA."""
    tokens, updated_at = _refill(state.tokens, updated_at, now, rate, capacity)
    ready_at = max(state.paused_until, updated_at + max(0.0, units - tokens) / rate)
    if ready_at <= now:
        return _Step(tokens - units, updated_at, 0.0)
    return _Step(tokens, updated_at, ready_at - now)


class _TokenBucketBudget(ABC):
    """The waiting loop; subclasses make one atomic take-or-tell-wait attempt against shared state."""

    def __init__(self, rate_per_second: float, capacity: float, aimd: AimdPolicy | None = None) -> None:
        if rate_per_second <= 0 or capacity <= 0:
            raise ValueError(f"rate ({rate_per_second}) and capacity ({capacity}) must be positive")
        self.rate = float(rate_per_second)  # the configured rate; buckets refill at rate × their factor
        self.capacity = float(capacity)
        self.aimd = aimd or AimdPolicy()

    def acquire(self, key: str, units: int, *, timeout: float | None = None) -> float:
        """Block until `units` tokens of `key` are taken; return the seconds waited."""
        if units <= 0:
            raise ValueError(f"units must be positive, got {units}")
        if units > self.capacity:
            raise ValueError(f"{units} units exceed the bucket's capacity of {self.capacity:g}; split the batch")
        start = time.monotonic()
        while True:
            wait = self._attempt(key, units)
            waited = time.monotonic() - start
            if wait <= 0:
                return waited
            if timeout is not None and waited + wait > timeout:
                raise QuotaWaitTimeout(key, units, wait, timeout)
            # Jitter so workers told the same wait do not all hit the lock/script at the same instant.
            time.sleep(wait + _WAKE_MARGIN + random.uniform(0.0, min(0.01, wait * 0.1)))

    def paused_until(self, key: str) -> float:
        return self.snapshot(key).paused_until

    @abstractmethod
    def _attempt(self, key: str, units: int) -> float:
        """Take the units and return 0, or return the seconds until they will be available."""

    @abstractmethod
    def refund(self, key: str, units: int) -> None:
        """Give back units of a call the server answered without doing its work (a 5xx).

        Not while paused: a paused bucket restarts empty, and refunds would become a burst.
        """

    @abstractmethod
    def pause(self, key: str, until_epoch: float) -> None: ...

    @abstractmethod
    def snapshot(self, key: str) -> BucketState: ...

    @abstractmethod
    def adapt_rate(self, key: str, event: RateEvent) -> float:
        """Record a call's outcome for the account's rate (`next_rate_factor`); return the factor now in force.

        Call it with "rate_limited" on a 429 / 403 rate-limit answer (besides `pause`), and with "success" after
        each successful call or batch. Tokens accrued so far keep the old rate; the new one applies from now.
        A success at the full rate writes nothing.
        """


# ---------------------------------------------------------------- Redis

# KEYS[1] bucket; ARGV rate, capacity, units, idle seconds. Returns the wait as a string ("0": taken)
# because Redis truncates Lua numbers to integers in replies.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local units, idle = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated_at', 'paused_until', 'rate_factor', 'minute', 'used',
  'used_prev')
rate = rate * (tonumber(s[4]) or 1)
local tokens = tonumber(s[1]) or capacity
local updated = tonumber(s[2]) or now
local paused = tonumber(s[3]) or 0
if now > updated then
  tokens = math.min(capacity, tokens + (now - updated) * rate)
  updated = now
end
local ready = math.max(paused, updated + math.max(0, units - tokens) / rate)
if ready > now then
  return string.format('%.17g', ready - now)
end
-- Units taken per calendar minute (this one and the one before), for status and metrics.
local minute = math.floor(now / 60)
local counted = tonumber(s[5])
local used, used_prev = tonumber(s[6]) or 0, tonumber(s[7]) or 0
if counted ~= minute then
  if counted == minute - 1 then used_prev = used else used_prev = 0 end
  used = 0
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens - units),
  'updated_at', string.format('%.17g', updated), 'paused_until', string.format('%.17g', paused),
  'minute', string.format('%d', minute), 'used', string.format('%d', used + units),
  'used_prev', string.format('%d', used_prev))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(0, paused - now) + idle) * 1000))
return '0'
"""

# KEYS[1] bucket; ARGV until (epoch s), idle seconds. Pauses only move forward; the bucket empties.
_PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local target, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if target <= paused then
  return string.format('%.17g', paused)
end
redis.call('HSET', KEYS[1], 'tokens', '0', 'updated_at', string.format('%.17g', math.max(target, now)),
  'paused_until', string.format('%.17g', target))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(0, target - now) + idle) * 1000))
return string.format('%.17g', target)
"""

# KEYS[1] bucket; ARGV units, capacity. Adds the units back unless the bucket is paused.
_REFUND_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'tokens', 'paused_until')
if not s[1] or (tonumber(s[2]) or 0) > now then return 0 end
local tokens = math.min(tonumber(ARGV[2]), tonumber(s[1]) + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens))
-- A refunded call was not served: it no longer counts as used (if it was taken this minute).
local m = redis.call('HMGET', KEYS[1], 'minute', 'used')
if tonumber(m[1]) == math.floor(now / 60) then
  redis.call('HSET', KEYS[1], 'used', string.format('%d', math.max(0, (tonumber(m[2]) or 0) - tonumber(ARGV[1]))))
end
return 1
"""

# KEYS[1] bucket. Returns {tokens, updated_at, paused_until, now, rate_factor, minute, used, used_prev} as
# strings, or {now} for no bucket.
_READ_LUA = """
local t = redis.call('TIME')
local now = string.format('%.17g', tonumber(t[1]) + tonumber(t[2]) / 1000000)
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated_at', 'paused_until', 'rate_factor', 'minute', 'used',
  'used_prev')
if not s[1] then return {now} end
return {s[1], s[2], s[3] or '0', now, s[4] or '1', s[5] or '-1', s[6] or '0', s[7] or '0'}
"""

# KEYS[1] bucket; ARGV rate, capacity, event, decrease, increase, floor, cooldown, idle seconds. Mirrors
# next_rate_factor (and the policy's cooldown); refills at the old factor up to now first. Returns the factor.
_ADAPT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity, event = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local decrease, increase, floor = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local cooldown, idle = tonumber(ARGV[7]), tonumber(ARGV[8])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'updated_at', 'paused_until', 'rate_factor', 'decreased_at')
local factor = tonumber(s[4]) or 1
local decreased = tonumber(s[5]) or 0
if event == 'success' and factor >= 1 then return string.format('%.17g', factor) end
if event == 'rate_limited' and now < decreased + cooldown then return string.format('%.17g', factor) end
local tokens = tonumber(s[1]) or capacity
local updated = tonumber(s[2]) or now
local paused = tonumber(s[3]) or 0
if now > updated then
  tokens = math.min(capacity, tokens + (now - updated) * rate * factor)
  updated = now
end
if event == 'rate_limited' then
  factor = math.max(floor, factor * decrease)
  decreased = now
else
  factor = math.min(1, factor + increase)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'updated_at', string.format('%.17g', updated),
  'paused_until', string.format('%.17g', paused), 'rate_factor', string.format('%.17g', factor),
  'decreased_at', string.format('%.17g', decreased))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(0, paused - now) + idle) * 1000))
return string.format('%.17g', factor)
"""


class RedisQuotaBudget(_TokenBucketBudget):
    """The bucket in a Redis hash, changed only by Lua scripts so each attempt is atomic."""

    def __init__(
        self, client: redis.Redis, rate_per_second: float, capacity: float, *, prefix: str = "mailpipe:quota:",
        aimd: AimdPolicy | None = None,
    ) -> None:
        super().__init__(rate_per_second, capacity, aimd)
        self.client = client
        self.prefix = prefix
        self._take = client.register_script(_TAKE_LUA)
        self._adapt = client.register_script(_ADAPT_LUA)
        self._pause = client.register_script(_PAUSE_LUA)
        self._read = client.register_script(_READ_LUA)
        self._refund = client.register_script(_REFUND_LUA)

    def _attempt(self, key: str, units: int) -> float:
        args: list[str | float] = [repr(self.rate), repr(self.capacity), units, IDLE_EXPIRY_SECONDS]
        return float(self._take(keys=[self.prefix + key], args=args))

    def pause(self, key: str, until_epoch: float) -> None:
        self._pause(keys=[self.prefix + key], args=[repr(float(until_epoch)), IDLE_EXPIRY_SECONDS])

    def refund(self, key: str, units: int) -> None:
        self._refund(keys=[self.prefix + key], args=[units, repr(self.capacity)])

    def snapshot(self, key: str) -> BucketState:
        values: list[Any] = self._read(keys=[self.prefix + key])
        if len(values) == 1:
            return BucketState(self.capacity, 0.0, used_last_minute=0.0)
        tokens, updated_at, paused, now, factor, minute, used, used_prev = (float(v) for v in values)
        tokens, _ = _refill(tokens, updated_at, now, self.rate * factor, self.capacity)
        return BucketState(tokens, paused, factor, sliding_minute_usage(int(minute), used, used_prev, now))

    def adapt_rate(self, key: str, event: RateEvent) -> float:
        _check_event(event)
        p = self.aimd
        args: list[str | float] = [repr(self.rate), repr(self.capacity), event, repr(p.decrease), repr(p.increase),
                                   repr(p.floor), repr(p.decrease_cooldown_seconds), IDLE_EXPIRY_SECONDS]
        return float(self._adapt(keys=[self.prefix + key], args=args))


# ---------------------------------------------------------------- PostgreSQL

_Q = QuotaBucket
_DB_NOW = cast(func.extract("epoch", func.clock_timestamp()), Float)


class PostgresQuotaBudget(_TokenBucketBudget):
    """The bucket in a `quota_buckets` row, one short `SELECT ... FOR UPDATE` transaction per attempt."""

    def __init__(self, engine: Engine, rate_per_second: float, capacity: float, *,
                 aimd: AimdPolicy | None = None) -> None:
        super().__init__(rate_per_second, capacity, aimd)
        self.engine = engine

    def _attempt(self, key: str, units: int) -> float:
        with self.engine.begin() as conn:
            conn.execute(self._upsert(key))
            row = conn.execute(self._select(key).with_for_update()).one()
            # The clock is read after the lock is held, so attempts that queued on it see later times.
            now = conn.execute(select(_DB_NOW)).scalar_one()
            step = _step(BucketState(row.tokens, row.paused_until), row.updated_at, now, units,
                         self.rate * row.rate_factor, self.capacity)
            if step.wait <= 0:
                conn.execute(update(_Q).where(_Q.key == key).values(tokens=step.tokens, updated_at=step.updated_at))
        return step.wait

    def pause(self, key: str, until_epoch: float) -> None:
        until = float(until_epoch)
        with self.engine.begin() as conn:
            conn.execute(self._upsert(key))
            conn.execute(
                update(_Q)
                .where(_Q.key == key, _Q.paused_until < until)
                .values(paused_until=until, tokens=0.0, updated_at=func.greatest(until, _DB_NOW))
            )

    def refund(self, key: str, units: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(_Q)
                .where(_Q.key == key, _Q.paused_until <= _DB_NOW)
                .values(tokens=func.least(self.capacity, _Q.tokens + units))
            )

    def snapshot(self, key: str) -> BucketState:
        with self.engine.connect() as conn:
            row = conn.execute(self._select(key)).one_or_none()
            now = conn.execute(select(_DB_NOW)).scalar_one()
        return self._state(row, now)

    def adapt_rate(self, key: str, event: RateEvent) -> float:
        _check_event(event)
        if event == "success":
            # The common case, a success at the full rate, takes no lock and writes nothing.
            with self.engine.connect() as conn:
                current = conn.execute(select(_Q.rate_factor).where(_Q.key == key)).scalar_one_or_none()
            if current is None or current >= 1.0:
                return 1.0 if current is None else float(current)
        with self.engine.begin() as conn:
            conn.execute(self._upsert(key))
            row = conn.execute(
                select(_Q.tokens, _Q.updated_at, _Q.rate_factor, _Q.decreased_at).where(_Q.key == key).with_for_update()
            ).one()
            now = conn.execute(select(_DB_NOW)).scalar_one()
            if event == "rate_limited" and now < row.decreased_at + self.aimd.decrease_cooldown_seconds:
                return float(row.rate_factor)  # the same episode as the last decrease
            factor = next_rate_factor(row.rate_factor, event, self.aimd)
            tokens, updated_at = _refill(row.tokens, row.updated_at, now, self.rate * row.rate_factor, self.capacity)
            values: dict[str, float] = {"tokens": tokens, "updated_at": updated_at, "rate_factor": factor}
            if event == "rate_limited":
                values["decreased_at"] = now
            conn.execute(update(_Q).where(_Q.key == key).values(**values))
        return factor

    def _state(self, row: Row[Any] | None, now: float) -> BucketState:
        if row is None:
            return BucketState(self.capacity, 0.0)
        tokens, _ = _refill(row.tokens, row.updated_at, now, self.rate * row.rate_factor, self.capacity)
        return BucketState(tokens, row.paused_until, row.rate_factor)

    def _upsert(self, key: str) -> Any:
        # A new bucket starts full; concurrent first attempts on a key queue on the insert, then on the lock.
        return (
            pg_insert(_Q)
            .values(key=key, tokens=self.capacity, updated_at=_DB_NOW, paused_until=0.0)
            .on_conflict_do_nothing(index_elements=["key"])
        )

    @staticmethod
    def _select(key: str) -> Any:
        return select(_Q.tokens, _Q.updated_at, _Q.paused_until, _Q.rate_factor).where(_Q.key == key)


def _check_event(event: str) -> None:
    if event not in ("success", "rate_limited"):
        raise ValueError(f"unknown rate event {event!r}; valid: 'success', 'rate_limited'")


# ---------------------------------------------------------------- choosing one


BURST_SHARE = 0.02  # the largest batch, as a share of a minute's quota


def effective_batch_size(table: CostTable, configured: int) -> int:
    """Gets per batch: the configured size, but never more than a small share of a minute's quota.

    Under the 2026 regime a 50-get batch is 1,000 units, a sixth of the minute; bursts that large
    would force the steady rate far below the ceiling (see `budget_for`).
    """
    return max(1, min(configured, int(BURST_SHARE * table.per_user_per_minute / table.cost("messages.get"))))


def batch_capacity(table: CostTable, batch_size: int, rate_per_second: float) -> float:
    """Burst size: one full batch of messages.get, or one second of rate if that is larger."""
    return float(max(table.cost("messages.get") * batch_size, rate_per_second))


def steady_rate(per_minute: float, capacity: float) -> float:
    """Tokens per second such that no sliding minute ever sees more than `per_minute` units.

    A bucket of capacity C refilled at r spends at most C + 60·r in any 60 s; Gmail counts per
    minute, so r = (L − C) / 60 runs at the ceiling minus one burst and never trips a 429.
    """
    return max(per_minute - capacity, capacity) / 60.0


def budget_for(settings: Settings, engine: Engine, *, redis_client: redis.Redis | None = None) -> QuotaBudget:
    """The shared budget: in Redis when there is one (through `redis_client` if given, e.g. one that gives
    up quickly for a request being answered), else in PostgreSQL."""
    table = CostTable.for_regime(settings.gmail_regime, settings.gmail_quota_per_minute)
    batch = effective_batch_size(table, settings.gmail_batch_size)
    capacity = batch_capacity(table, batch, table.per_user_per_minute / 60.0)
    rate = steady_rate(table.per_user_per_minute * settings.gmail_quota_headroom, capacity)
    url = shared_redis_url(settings)
    if url is None:
        return PostgresQuotaBudget(engine, rate, capacity)
    return RedisQuotaBudget(redis_client or shared_redis_client(url), rate, capacity)


# ---------------------------------------------------------------- server hints

_RETRY_AFTER_TEXT = re.compile(
    r"retry after\s+(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)", re.IGNORECASE
)


def retry_after_hint(exc: BaseException, now: datetime) -> float | None:
    """Seconds a refusing server asked for, read from the error itself: the openai client's `response`
    (`retry-after-ms`, then `retry-after`) or googleapiclient's `resp`, and Google's message text."""
    response = getattr(exc, "response", None)
    raw = getattr(response, "headers", None) or getattr(exc, "resp", None) or {}
    headers = {str(k).lower(): str(v) for k, v in dict(raw).items()}
    millis = headers.get("retry-after-ms", "").strip()
    if millis.replace(".", "", 1).isdigit():
        return float(millis) / 1000.0
    return retry_after_seconds(headers, str(getattr(exc, "message", "") or exc), now)


def retry_after_seconds(headers: Mapping[str, str], message: str, now: datetime) -> float | None:
    """Seconds the server asked us to wait: the larger of `Retry-After` and "Retry after <ISO time>"."""
    found = [s for s in (_header_seconds(headers, now), _message_seconds(message, now)) if s is not None]
    return max(found) if found else None


def _header_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _seconds_until(when, now)


def _message_seconds(message: str, now: datetime) -> float | None:
    match = _RETRY_AFTER_TEXT.search(message or "")
    if match is None:
        return None
    try:
        when = datetime.fromisoformat(match.group(1))
    except ValueError:
        return None
    return _seconds_until(when, now)


def _seconds_until(when: datetime, now: datetime) -> float:
    # Naive times are UTC: HTTP dates and Google's timestamps are.
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
