"""Adaptive AI concurrency: the pure decision, the per-process limiter, and the global one on real Redis."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from pipeline.resilience.classify import PERMANENT, ClassifiedError
from pipeline.resilience.concurrency import (
    ConcurrencyLimiter,
    ConcurrencyPolicy,
    LocalConcurrencyLimiter,
    RedisConcurrencyLimiter,
    SlotWaitTimeout,
    decide,
    error_rate,
    limiter_for,
    next_limit,
)
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
POLICY = ConcurrencyPolicy(max_limit=8, min_limit=1, window_calls=20, min_samples=10)
MakeLimiter = Callable[..., ConcurrencyLimiter]


@pytest.fixture(params=["redis", "local"])
def make_limiter(request: pytest.FixtureRequest) -> MakeLimiter:
    if request.param == "local":
        return lambda policy=POLICY: LocalConcurrencyLimiter("ai", policy)
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    prefix = request.getfixturevalue("redis_prefix")
    return lambda policy=POLICY: RedisConcurrencyLimiter(client, "ai", policy, prefix=prefix)


# ---------------------------------------------------------------- the decision, pure


@pytest.mark.parametrize(
    ("current", "rate", "expected"),
    [
        (4, 0.20, 2),  # above 15%: halved
        (8, 0.50, 4),
        (3, 0.16, 1),  # floor(1.5)
        (1, 0.90, 1),  # never below the minimum
        (4, 0.15, 4),  # 15% does not pass 15%: hold
        (4, 0.10, 4),
        (4, 0.05, 4),  # 5% is not under 5%: hold
        (4, 0.049, 5),  # under 5%: one more
        (4, 0.0, 5),
        (8, 0.0, 8),  # never above the maximum
        (20, 0.10, 8),  # an out-of-range current is clamped first
        (0, 0.10, 1),
    ],
)
def test_next_limit(current: int, rate: float, expected: int) -> None:
    assert next_limit(current, rate, POLICY) == expected


def test_error_rate_and_decide() -> None:
    assert error_rate([]) == 0.0
    assert error_rate([True, False, True, True]) == 0.25
    assert decide(4, [False] * 9, POLICY) == 4  # too few samples decide nothing
    assert decide(4, [False] * 2 + [True] * 8, POLICY) == 2
    assert decide(4, [True] * 10, POLICY) == 5


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        ConcurrencyPolicy(max_limit=0)
    with pytest.raises(ValueError):
        ConcurrencyPolicy(shrink_above=0.01, grow_below=0.05)
    with pytest.raises(ValueError):
        ConcurrencyPolicy(max_limit=4, initial=5)
    assert ConcurrencyPolicy(max_limit=6).start == 6
    assert ConcurrencyPolicy(max_limit=6, initial=2).start == 2


# ---------------------------------------------------------------- both limiters


def test_limit_shrinks_above_15_percent_errors_and_grows_under_5(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ConcurrencyPolicy(max_limit=4, window_calls=20, min_samples=10))
    assert limiter.snapshot().limit == 4
    outcomes = [False, False] + [True] * 8  # 20% errors
    limits = [limiter.record(ok) for ok in outcomes]
    assert limits == [4] * 9 + [2]
    snap = limiter.snapshot()
    assert (snap.limit, snap.samples) == (2, 0)  # the record starts afresh after a move
    for _ in range(10):
        limiter.record(True)
    assert limiter.snapshot().limit == 3
    for _ in range(10):
        limiter.record(True)
    assert limiter.snapshot().limit == 4
    for _ in range(10):
        limiter.record(True)
    assert limiter.snapshot().limit == 4  # the maximum


def test_moderate_error_rates_hold_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ConcurrencyPolicy(max_limit=4, initial=2, window_calls=20, min_samples=10))
    # Once ten calls are in, the error rate stays between 5% and 15% (1/10 ... 2/16 ... 2/20).
    for ok in [True] * 5 + [False] + [True] * 9 + [False] + [True] * 4:
        assert limiter.record(ok) == 2
    snap = limiter.snapshot()
    assert snap.samples == 20 and snap.error_rate == pytest.approx(0.1)


def test_slots_never_exceed_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ConcurrencyPolicy(max_limit=2, window_calls=20, min_samples=10))
    with limiter.slot(timeout=1), limiter.slot(timeout=1):
        assert limiter.snapshot().in_use == 2
        started = time.monotonic()
        with pytest.raises(SlotWaitTimeout), limiter.slot(timeout=0.1):
            pass  # pragma: no cover
        assert 0.09 <= time.monotonic() - started < 1.0
    assert limiter.snapshot().in_use == 0
    with limiter.slot(timeout=0.1):
        pass


def test_a_shrunk_limit_applies_to_new_slots(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ConcurrencyPolicy(max_limit=4, window_calls=20, min_samples=10))
    for _ in range(10):
        limiter.record(False)
    assert limiter.snapshot().limit == 2
    with limiter.slot(timeout=1), limiter.slot(timeout=1), pytest.raises(SlotWaitTimeout), limiter.slot(timeout=0.05):
        pass  # pragma: no cover


def test_call_records_struggling_as_errors_and_answers_as_successes(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ConcurrencyPolicy(max_limit=4, window_calls=20, min_samples=10))
    assert limiter.call(lambda x: x * 2, 21, timeout=1) == 42
    with pytest.raises(ConnectionError):
        limiter.call(lambda: (_ for _ in ()).throw(ConnectionError("reset")))
    with pytest.raises(ClassifiedError):
        limiter.call(lambda: (_ for _ in ()).throw(ClassifiedError("bad request", PERMANENT)))
    snap = limiter.snapshot()
    assert (snap.samples, snap.error_rate, snap.in_use) == (3, pytest.approx(1 / 3), 0)


def test_old_outcomes_are_forgotten(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ConcurrencyPolicy(max_limit=4, window_calls=20, min_samples=10, window_seconds=0.2))
    for _ in range(9):
        limiter.record(False)
    time.sleep(0.25)
    assert limiter.record(False) == 4  # the nine earlier errors are too old to count
    assert limiter.snapshot().samples == 1


# ---------------------------------------------------------------- global: across processes on Redis

_HOLDER = """
import sys, time, redis
from pipeline.resilience.concurrency import ConcurrencyPolicy, RedisConcurrencyLimiter
url, prefix, limit, seconds, counter = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
client = redis.Redis.from_url(url)
limiter = RedisConcurrencyLimiter(client, "ai", ConcurrencyPolicy(max_limit=limit), prefix=prefix,
                                  poll_seconds=0.005)
print("ready", flush=True)
sys.stdin.readline()
most, calls, stop = 0, 0, time.monotonic() + seconds
while time.monotonic() < stop:
    with limiter.slot(timeout=10):
        most = max(most, client.incr(counter))
        time.sleep(0.005)
        client.decr(counter)
        calls += 1
print(most, calls, flush=True)
"""


def test_the_limit_holds_across_four_processes(redis_url: str, redis_prefix: str) -> None:
    counter = redis_prefix + "in-flight"
    args = [redis_url, redis_prefix, "3", "1.0", counter]
    procs = [subprocess.Popen([sys.executable, "-c", _HOLDER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT) for _ in range(4)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=30)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    most = max(int(r[0]) for r in results)
    calls = sum(int(r[1]) for r in results)
    assert most <= 3  # never more in flight than the limit, across all four
    assert most == 3  # and the limit was actually used
    assert calls >= 100 and all(int(r[1]) > 0 for r in results)  # every process got slots


_LEASED = """
import sys, time, redis
from pipeline.resilience.concurrency import ConcurrencyPolicy, RedisConcurrencyLimiter
limiter = RedisConcurrencyLimiter(redis.Redis.from_url(sys.argv[1]), "ai",
                                  ConcurrencyPolicy(max_limit=1, lease_seconds=1.5), prefix=sys.argv[2])
with limiter.slot(timeout=5):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_killed_workers_slot_frees_itself(redis_url: str, redis_prefix: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _LEASED, redis_url, redis_prefix], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        held = time.monotonic()
    finally:
        proc.kill()  # SIGKILL: no release, as a crashed or OOM-killed worker
        proc.wait()
    limiter = RedisConcurrencyLimiter(redis.Redis.from_url(redis_url), "ai",
                                      ConcurrencyPolicy(max_limit=1, lease_seconds=1.5), prefix=redis_prefix)
    with pytest.raises(SlotWaitTimeout), limiter.slot(timeout=0.05):
        pass  # pragma: no cover - the dead worker's lease still holds the only slot
    with limiter.slot(timeout=5):
        assert time.monotonic() - held < 1.5 + 1.0  # freed when its 1.5 s lease ran out (plus polling, load)
        assert limiter.snapshot().in_use == 1


def test_renew_keeps_a_long_call_s_slot(redis_url: str, redis_prefix: str) -> None:
    policy = ConcurrencyPolicy(max_limit=1, lease_seconds=0.6)
    client = redis.Redis.from_url(redis_url)
    limiter = RedisConcurrencyLimiter(client, "ai", policy, prefix=redis_prefix)
    other = RedisConcurrencyLimiter(client, "ai", policy, prefix=redis_prefix)
    with limiter.slot(timeout=1) as slot:
        time.sleep(0.4)
        assert slot.renew()  # now held until ~1.0 s
        time.sleep(0.4)  # past the first lease, within the renewed one
        with pytest.raises(SlotWaitTimeout), other.slot(timeout=0.05):
            pass  # pragma: no cover
        time.sleep(0.6)
        assert not slot.renew()  # it ran out: the caller learns its slot may be someone else's


_RECORDER = """
import sys, redis
from pipeline.resilience.concurrency import ConcurrencyPolicy, RedisConcurrencyLimiter
limiter = RedisConcurrencyLimiter(redis.Redis.from_url(sys.argv[1]), "ai", ConcurrencyPolicy(max_limit=4),
                                  prefix=sys.argv[2])
for ok in sys.argv[3]:
    limiter.record(ok == "1")
print(limiter.snapshot().limit)
"""


def test_the_record_and_limit_are_shared(redis_url: str, redis_prefix: str) -> None:
    here = RedisConcurrencyLimiter(redis.Redis.from_url(redis_url), "ai", ConcurrencyPolicy(max_limit=4),
                                   prefix=redis_prefix)
    for _ in range(5):
        here.record(False)
    # Another process adds five more outcomes to the same record: ten calls, 60% errors, halved.
    done = subprocess.run([sys.executable, "-c", _RECORDER, redis_url, redis_prefix, "11111"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert here.snapshot().limit == 2 and here.snapshot().shared


# ---------------------------------------------------------------- choosing one


def test_limiter_for(redis_url: str) -> None:
    local = limiter_for(Settings(_env_file=None, redis_url=None, broker_url=None,  # type: ignore[call-arg]
                                 ai_concurrency_max=3))
    assert isinstance(local, LocalConcurrencyLimiter)
    assert local.snapshot().limit == 3 and not local.snapshot().shared
    again = limiter_for(Settings(_env_file=None, redis_url=None, broker_url=None,  # type: ignore[call-arg]
                                 ai_concurrency_max=3))
    assert again is local  # one per process: its threads share it
    shared = limiter_for(Settings(_env_file=None, redis_url=redis_url), name=f"test-{uuid.uuid4().hex}")  # type: ignore[call-arg]
    assert isinstance(shared, RedisConcurrencyLimiter)
    assert shared.snapshot().shared and shared.snapshot().limit == Settings(_env_file=None).ai_concurrency_max  # type: ignore[call-arg]
