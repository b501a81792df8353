"""The shared Gmail quota budget on real Redis and real PostgreSQL, plus its pure parts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from pipeline.errors import ConfigError
from pipeline.resilience.quota import (
    AimdPolicy,
    CostTable,
    PostgresQuotaBudget,
    QuotaWaitTimeout,
    RateEvent,
    RedisQuotaBudget,
    budget_for,
    effective_batch_size,
    next_rate_factor,
    retry_after_seconds,
)
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

RATE = 200.0  # tokens per second: high, so waits are tens of milliseconds
CAPACITY = 20.0
Budget = RedisQuotaBudget | PostgresQuotaBudget
MakeBudget = Callable[..., Budget]


@pytest.fixture(params=["redis", "postgres"])
def make_budget(request: pytest.FixtureRequest) -> Iterator[MakeBudget]:
    """Budgets on one store, with a chosen AIMD policy: make_budget(aimd=AimdPolicy(...))."""
    if request.param == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = request.getfixturevalue("redis_prefix")
        yield lambda aimd=None: RedisQuotaBudget(client, RATE, CAPACITY, prefix=prefix, aimd=aimd)
        client.close()
    else:
        engine = request.getfixturevalue("engine")
        yield lambda aimd=None: PostgresQuotaBudget(engine, RATE, CAPACITY, aimd=aimd)


@pytest.fixture
def budget(make_budget: MakeBudget) -> Budget:
    return make_budget()


# ---------------------------------------------------------------- token bucket, both stores


def test_starts_full_and_takes_without_waiting(budget: Budget) -> None:
    assert budget.snapshot("a").tokens == pytest.approx(CAPACITY)
    started = time.monotonic()
    assert budget.acquire("a", 20) < 0.05
    left = budget.snapshot("a").tokens
    assert left <= RATE * (time.monotonic() - started) + 0.5  # only what refilled since
    assert budget.snapshot("other").tokens == pytest.approx(CAPACITY)  # keys are independent


def test_beyond_capacity_waits_for_the_refill(budget: Budget) -> None:
    budget.acquire("a", 20)
    expected = 10 / RATE
    started = time.monotonic()
    waited = budget.acquire("a", 10)
    elapsed = time.monotonic() - started
    assert 0.8 * expected <= waited <= 3 * expected
    assert elapsed >= waited


def test_oversized_request_is_an_error(budget: Budget) -> None:
    with pytest.raises(ValueError, match="capacity"):
        budget.acquire("a", 21)
    with pytest.raises(ValueError):
        budget.acquire("a", 0)


def test_timeout_raises_without_sleeping(budget: Budget) -> None:
    budget.acquire("a", 20)
    started = time.monotonic()
    with pytest.raises(QuotaWaitTimeout) as info:
        budget.acquire("a", 20, timeout=0.02)  # needs ~0.1 s
    assert time.monotonic() - started < 0.05
    assert info.value.key == "a"
    assert budget.acquire("a", 1, timeout=0.5) <= 0.5


def test_pause_blocks_until_its_time_then_restarts_empty(budget: Budget) -> None:
    until = time.time() + 0.3
    budget.pause("a", until)
    assert budget.paused_until("a") == pytest.approx(until)
    assert budget.snapshot("a").tokens == 0
    with pytest.raises(QuotaWaitTimeout):
        budget.acquire("a", 1, timeout=0.1)
    started = time.time()
    budget.acquire("a", 10)
    done = time.time()
    # Not before the pause ends, and not before 10 tokens accrued from empty after it.
    assert done >= until + 0.8 * 10 / RATE
    assert done - started < (until - started) + 3 * 10 / RATE + 0.1


def test_pause_only_moves_forward(budget: Budget) -> None:
    later = time.time() + 60
    budget.pause("a", later)
    budget.pause("a", time.time() + 1)
    budget.pause("a", 0)
    assert budget.paused_until("a") == pytest.approx(later)
    budget.pause("a", later + 5)
    assert budget.paused_until("a") == pytest.approx(later + 5)
    assert budget.paused_until("never-paused") == 0


def _spend(budget: Budget, key: str, units: int, seconds: float) -> int:
    taken = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        budget.acquire(key, units)
        taken += units
    return taken


def _assert_within_budget(taken: int, elapsed: float) -> None:
    ceiling = CAPACITY + RATE * elapsed
    assert taken <= ceiling + 7  # one in-flight request may finish just after we read the clock
    assert taken >= 0.6 * RATE * elapsed  # and the workers together did run near the rate


def test_threads_share_one_budget(budget: Budget) -> None:
    totals: list[int] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: totals.append(_spend(budget, "a", 7, 0.8))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _assert_within_budget(sum(totals), time.monotonic() - started)


_SPENDER = """
import sys, time, redis
from pipeline.resilience.quota import RedisQuotaBudget
url, rate, capacity, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
budget = RedisQuotaBudget(redis.Redis.from_url(url), rate, capacity, prefix=sys.argv[5])
print("ready", flush=True)
sys.stdin.readline()
taken, stop = 0, time.monotonic() + seconds
while time.monotonic() < stop:
    budget.acquire("a", 7)
    taken += 7
print(taken, flush=True)
"""


def test_processes_share_one_redis_budget(redis_url: str, redis_prefix: str) -> None:
    # Separate interpreters (not fork: this process may hold torch's threads by now).
    args = [redis_url, str(RATE), str(CAPACITY), "0.8", redis_prefix]
    procs = [subprocess.Popen([sys.executable, "-c", _SPENDER, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(3)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    totals = [int(proc.communicate(timeout=20)[0].strip()) for proc in procs]
    elapsed = time.monotonic() - started
    assert all(proc.returncode == 0 for proc in procs)
    assert sum(totals) <= CAPACITY + RATE * elapsed + 7
    assert sum(totals) >= 0.4 * RATE * 0.8


# ---------------------------------------------------------------- choosing a store


def _settings(**kwargs: object) -> Settings:
    base: dict[str, object] = {"redis_url": None, "broker_url": None, "gmail_quota_per_minute": None}
    return Settings(_env_file=None, **{**base, **kwargs})  # type: ignore[call-arg,arg-type]


def test_budget_for_prefers_redis(engine: Engine, redis_url: str) -> None:
    assert isinstance(budget_for(_settings(redis_url=redis_url), engine), RedisQuotaBudget)
    assert isinstance(budget_for(_settings(broker_url=redis_url), engine), RedisQuotaBudget)
    assert isinstance(budget_for(_settings(broker_url="rediss://h:6380/0"), engine), RedisQuotaBudget)


def test_budget_for_falls_back_to_postgres(engine: Engine) -> None:
    chosen = budget_for(_settings(), engine)
    assert isinstance(chosen, PostgresQuotaBudget)
    other = budget_for(_settings(broker_url="sqla+postgresql://x/y"), engine)
    assert isinstance(other, PostgresQuotaBudget)


def test_budget_for_rate_and_capacity_follow_the_regime(engine: Engine) -> None:
    # 2026: a 50-get batch would be a sixth of the minute, so batches shrink to 2% of it (6 gets).
    chosen = budget_for(_settings(gmail_regime="2026", gmail_quota_headroom=0.5, gmail_batch_size=50), engine)
    assert isinstance(chosen, PostgresQuotaBudget)
    assert chosen.capacity == 6 * 20
    # One burst plus a minute of refill never exceeds the minute's (headroom-scaled) quota.
    assert chosen.capacity + 60 * chosen.rate == pytest.approx(6_000 * 0.5)
    legacy = budget_for(_settings(), engine)
    assert isinstance(legacy, PostgresQuotaBudget)
    assert legacy.capacity == 50 * 5
    assert legacy.rate == pytest.approx((15_000 - 250) / 60)
    small = budget_for(_settings(gmail_batch_size=1, gmail_quota_per_minute=1200), engine)
    assert isinstance(small, PostgresQuotaBudget)
    assert small.capacity == pytest.approx(20)  # one second of rate beats one 5-unit call


def test_effective_batch_size_caps_bursts_at_a_share_of_the_minute() -> None:
    assert effective_batch_size(CostTable.legacy(), 50) == 50
    assert effective_batch_size(CostTable.y2026(), 50) == 6
    assert effective_batch_size(CostTable.for_regime("legacy", 100), 50) == 1


# ---------------------------------------------------------------- cost tables


def test_cost_tables() -> None:
    legacy, new = CostTable.legacy(), CostTable.y2026()
    assert (legacy.per_user_per_minute, new.per_user_per_minute) == (15_000, 6_000)
    assert (legacy.cost("messages.get"), new.cost("messages.get")) == (5, 20)
    assert (legacy.cost("attachments.get"), new.cost("attachments.get")) == (5, 20)
    assert new.cost("history.list") == 2 and new.cost("watch") == 100
    with pytest.raises(ValueError, match="messages.send"):
        legacy.cost("messages.send")


def test_for_regime() -> None:
    assert CostTable.for_regime("legacy", None) == CostTable.legacy()
    overridden = CostTable.for_regime("2026", 3000)
    assert overridden.per_user_per_minute == 3000 and overridden.cost("messages.get") == 20
    with pytest.raises(ConfigError, match="'2026'.*'legacy'"):
        CostTable.for_regime("2025", None)


# ---------------------------------------------------------------- server hints

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "message", "expected"),
    [
        ({}, "", None),
        ({"Retry-After": "30"}, "", 30.0),
        ({"retry-after": " 7 "}, "", 7.0),
        ({"Retry-After": "Mon, 23 Nov 2026 12:00:45 GMT"}, "", 45.0),
        ({"Retry-After": "Mon, 23 Nov 2026 11:59:00 GMT"}, "", 0.0),
        ({"Retry-After": "soon"}, "", None),
        ({}, "User-rate limit exceeded.  Retry after 2026-11-23T12:00:05.123Z", 5.123),
        ({}, "retry after 2026-11-23T13:00:00+01:00", 0.0),
        ({}, "Retry after 2026-11-23T12:01:00", 60.0),
        ({}, "Retry after tomorrow", None),
        ({"Retry-After": "3"}, "Retry after 2026-11-23T12:00:10Z", 10.0),
        ({"Retry-After": "20"}, "Retry after 2026-11-23T12:00:10Z", 20.0),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], message: str, expected: float | None) -> None:
    got = retry_after_seconds(headers, message, NOW)
    assert got == (None if expected is None else pytest.approx(expected))


def test_refund_gives_back_units_but_not_during_a_pause(budget: Budget) -> None:
    budget.acquire("a", 20)
    budget.refund("a", 15)
    assert 15 <= budget.snapshot("a").tokens <= CAPACITY
    budget.refund("a", 15)
    assert budget.snapshot("a").tokens == pytest.approx(CAPACITY)  # never beyond capacity
    budget.pause("a", time.time() + 30)
    budget.refund("a", 15)
    assert budget.snapshot("a").tokens == 0


# ---------------------------------------------------------------- AIMD refill rate

AIMD = AimdPolicy()
NO_COOLDOWN = AimdPolicy(decrease_cooldown_seconds=0.0)


@pytest.mark.parametrize(
    ("current", "event", "expected"),
    [
        (1.0, "rate_limited", 0.5),
        (0.5, "rate_limited", 0.25),
        (0.08, "rate_limited", 0.05),  # the floor
        (0.05, "rate_limited", 0.05),
        (0.5, "success", 0.52),
        (0.99, "success", 1.0),  # never above the configured rate
        (1.0, "success", 1.0),
        (0.05, "success", 0.07),
    ],
)
def test_next_rate_factor(current: float, event: RateEvent, expected: float) -> None:
    assert next_rate_factor(current, event, AIMD) == pytest.approx(expected)


def test_next_rate_factor_follows_its_policy_and_rejects_nonsense() -> None:
    gentle = AimdPolicy(decrease=0.8, increase=0.1, floor=0.5)
    assert next_rate_factor(1.0, "rate_limited", gentle) == pytest.approx(0.8)
    assert next_rate_factor(0.55, "rate_limited", gentle) == pytest.approx(0.5)
    assert next_rate_factor(0.5, "success", gentle) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown rate event"):
        next_rate_factor(1.0, "timeout", AIMD)  # type: ignore[arg-type]
    for bad in ({"decrease": 1.0}, {"decrease": 0.0}, {"floor": 0.0}, {"increase": -0.1}):
        with pytest.raises(ValueError):
            AimdPolicy(**bad)  # type: ignore[arg-type]


def test_rate_limit_halves_the_factor_and_successes_restore_it(make_budget: MakeBudget) -> None:
    budget = make_budget(NO_COOLDOWN)
    assert budget.snapshot("a").rate_factor == 1.0
    assert budget.adapt_rate("a", "rate_limited") == pytest.approx(0.5)
    assert budget.snapshot("a").rate_factor == pytest.approx(0.5)
    assert budget.snapshot("other").rate_factor == 1.0  # per account
    for _ in range(10):
        budget.adapt_rate("a", "rate_limited")
    assert budget.snapshot("a").rate_factor == pytest.approx(0.05)  # the floor
    for _ in range(3):
        budget.adapt_rate("a", "success")
    assert budget.snapshot("a").rate_factor == pytest.approx(0.11)
    for _ in range(60):
        budget.adapt_rate("a", "success")
    assert budget.snapshot("a").rate_factor == 1.0


def test_store_agrees_with_the_pure_function(make_budget: MakeBudget) -> None:
    # The Redis store mirrors next_rate_factor in Lua; both stores must give exactly the pure results.
    budget = make_budget(NO_COOLDOWN)
    events: list[RateEvent] = ["rate_limited", "success", "rate_limited", "rate_limited", "success", "success",
                               "rate_limited", "rate_limited", "rate_limited", "rate_limited", "success"]
    expected = 1.0
    for event in events:
        expected = next_rate_factor(expected, event, NO_COOLDOWN)
        assert budget.adapt_rate("a", event) == expected
    assert budget.snapshot("a").rate_factor == expected


def test_one_episode_of_rate_limits_halves_once(make_budget: MakeBudget) -> None:
    # Every worker's in-flight call sees the same 429: within the cooldown they are one decrease.
    budget = make_budget(AimdPolicy(decrease_cooldown_seconds=0.3))
    for _ in range(5):
        budget.adapt_rate("a", "rate_limited")
    assert budget.snapshot("a").rate_factor == pytest.approx(0.5)
    time.sleep(0.35)
    assert budget.adapt_rate("a", "rate_limited") == pytest.approx(0.25)


def test_a_lowered_factor_slows_the_refill(make_budget: MakeBudget) -> None:
    budget = make_budget(NO_COOLDOWN)
    budget.acquire("a", 20)
    drained = time.monotonic()
    budget.adapt_rate("a", "rate_limited")
    # Tokens refilled at the full rate until the change (at most this many; on a loaded machine the
    # change itself took ~30 ms once, 6 tokens) shorten the wait that follows.
    before_change = (time.monotonic() - drained) * RATE
    expected = 10 / (RATE * 0.5)  # twice the full-rate wait
    waited = budget.acquire("a", 10)
    assert 0.8 * (10 - before_change) / (RATE * 0.5) <= waited <= 3 * expected


def test_tokens_accrued_before_a_change_keep_the_old_rate(make_budget: MakeBudget) -> None:
    budget = make_budget(NO_COOLDOWN)
    budget.acquire("a", 20)
    emptied = time.monotonic()
    time.sleep(0.05)
    elapsed = time.monotonic() - emptied
    budget.adapt_rate("a", "rate_limited")
    # At the full rate until the change (not half of it, retroactively).
    assert budget.snapshot("a").tokens >= min(CAPACITY, 0.9 * RATE * elapsed)


def test_a_success_at_full_rate_writes_nothing(make_budget: MakeBudget, redis_url: str) -> None:
    budget = make_budget()
    assert budget.adapt_rate("fresh", "success") == 1.0
    if isinstance(budget, RedisQuotaBudget):
        assert not redis.Redis.from_url(redis_url).exists(budget.prefix + "fresh")
    else:
        from sqlalchemy import select

        from pipeline.storage.models import QuotaBucket

        with budget.engine.connect() as conn:
            assert conn.execute(select(QuotaBucket.key).where(QuotaBucket.key == "fresh")).first() is None


def test_pause_and_refund_keep_the_factor(budget: Budget) -> None:
    budget.adapt_rate("a", "rate_limited")
    budget.pause("a", time.time() + 0.05)
    budget.refund("a", 5)
    assert budget.snapshot("a").rate_factor == pytest.approx(0.5)
