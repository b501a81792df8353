"""Circuit breakers shared across processes, on real Redis and real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httplib2
import pytest
import redis
from googleapiclient.errors import HttpError
from sqlalchemy import Engine

from pipeline.resilience.breakers import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerOpenError,
    Breakers,
    BreakerStore,
    CircuitPostgresStorage,
    PostgresBreakerStore,
    RedisBreakerStore,
    ai_breaker_name,
    breaker_states,
    breakers_for,
    counts_as_failure,
)
from pipeline.resilience.classify import GONE, PERMANENT, QUOTA, RATE_LIMIT, TRANSIENT, ClassifiedError, classify
from pipeline.settings import Settings
from tests.conftest import delete_redis_prefix

ROOT = Path(__file__).resolve().parents[1]
FAIL_MAX = 3

MakeBreakers = Callable[..., Breakers]


@pytest.fixture(params=["redis", "postgres"])
def store_spec(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(kind, url, redis prefix): enough for this process or a subprocess to open the same store."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    request.getfixturevalue("engine")  # empties the tables
    return "postgres", request.getfixturevalue("pg_url"), ""


def _store(kind: str, url: str, prefix: str) -> BreakerStore:
    if kind == "redis":
        return RedisBreakerStore(redis.Redis.from_url(url), prefix=prefix)
    from pipeline.storage.db import engine_for

    return PostgresBreakerStore(engine_for(url))


@pytest.fixture
def make_breakers(store_spec: tuple[str, str, str]) -> MakeBreakers:
    def make(reset_seconds: float = 30.0, fail_max: int = FAIL_MAX) -> Breakers:
        return Breakers(_store(*store_spec), fail_max=fail_max, reset_seconds=reset_seconds)

    return make


def _down() -> None:
    raise ConnectionError("connection reset by peer")


def _not_found() -> None:
    raise ClassifiedError("404 not found", GONE)


def _trip(breakers: Breakers, name: str) -> None:
    for _ in range(FAIL_MAX):
        with pytest.raises(ConnectionError):  # the tripping call raises its own error, not BreakerOpenError
            breakers.call(name, _down)


def _http_error(status: int, reason: str = "") -> HttpError:
    body = b'{"error": {"message": "m", "errors": [{"reason": "%s"}]}}' % reason.encode()
    return HttpError(httplib2.Response({"status": status}), body)


# ---------------------------------------------------------------- which errors count


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (ConnectionError("reset"), True),
        (TimeoutError("read timed out"), True),
        (ClassifiedError("flaky", TRANSIENT), True),
        (ClassifiedError("slow", "timeout"), True),
        (_http_error(503), True),
        (_http_error(500, "backendError"), True),
        (_http_error(404), False),  # the service answered: not an outage
        (_http_error(400, "invalidArgument"), False),
        (_http_error(429, "rateLimitExceeded"), False),  # the quota budget's business
        (_http_error(403, "userRateLimitExceeded"), False),
        (ClassifiedError("gone", GONE), False),
        (ClassifiedError("quota", QUOTA), False),
        (ClassifiedError("slow down", RATE_LIMIT), False),
        (ClassifiedError("bad", PERMANENT), False),
        (ValueError("a bug"), False),
        (BreakerOpenError("other", 5.0), False),  # another breaker's refusal is not this one's outage
    ],
)
def test_counts_as_failure(exc: BaseException, counts: bool) -> None:
    assert counts_as_failure(exc) is counts


def test_our_own_soft_time_limit_is_not_the_endpoints_failure() -> None:
    import httpx2
    import openai
    from billiard.exceptions import SoftTimeLimitExceeded

    assert not counts_as_failure(SoftTimeLimitExceeded())
    # What the openai client raises when the limit's signal lands inside a request: a connection error.
    try:
        try:
            raise SoftTimeLimitExceeded()
        except SoftTimeLimitExceeded as stop:
            raise openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1/v1/embeddings")) from stop
    except openai.APIConnectionError as wrapped:
        assert not counts_as_failure(wrapped)
    assert counts_as_failure(openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1/")))


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://api.openai.com/v1", "ai:api.openai.com"),
        ("http://LOCALHOST:11434/v1/", "ai:localhost:11434"),
        ("http://user:secret@vllm.internal:8000/v1", "ai:vllm.internal:8000"),
        ("vllm.internal:8000", "ai:vllm.internal:8000"),
    ],
)
def test_ai_breaker_name(url: str, name: str) -> None:
    assert ai_breaker_name(url) == name


def test_breaker_open_error_is_a_transient_classified_error() -> None:
    exc = BreakerOpenError("gmail", 12.5)
    assert isinstance(exc, ClassifiedError)
    assert classify(exc) == TRANSIENT
    assert (exc.name, exc.retry_after) == ("gmail", 12.5)
    assert BreakerOpenError("gmail", -3).retry_after == 0.0


# ---------------------------------------------------------------- the state machine, both stores


def test_opens_after_fail_max_transient_failures(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers()
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("reset")

    for _ in range(FAIL_MAX - 1):
        with pytest.raises(ConnectionError):
            breakers.call("gmail", down)
    assert breakers.get("gmail").snapshot().state == CLOSED
    with pytest.raises(ConnectionError):
        breakers.call("gmail", down)
    assert breakers.get("gmail").snapshot().state == OPEN
    with pytest.raises(BreakerOpenError) as info:
        breakers.call("gmail", down)
    assert calls == FAIL_MAX  # the refused call was not made
    assert info.value.name == "gmail"


def test_permanent_errors_do_not_open_it(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers()
    for fn in [_not_found, lambda: int("x")] * 5:
        with pytest.raises((ClassifiedError, ValueError)):
            breakers.call("gmail", fn)
    assert breakers.get("gmail").snapshot().state == CLOSED
    # Failures must be consecutive: an answer in between (even a 404) starts the count again.
    for fn in [_down, _down, _not_found, _down, _down]:
        with pytest.raises((ConnectionError, ClassifiedError)):
            breakers.call("gmail", fn)
    snap = breakers.get("gmail").snapshot()
    assert (snap.state, snap.failures) == (CLOSED, 2)


def test_retry_after_counts_down_the_reset_timeout(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers(reset_seconds=30.0)
    _trip(breakers, "gmail")
    with pytest.raises(BreakerOpenError) as info:
        breakers.call("gmail", lambda: None)
    # Redis keeps opened_at to the whole second (pybreaker), so up to 1 s less.
    assert 28.5 <= info.value.retry_after <= 30.0
    assert breakers.get("gmail").retry_after() == pytest.approx(info.value.retry_after, abs=0.5)
    assert breakers.get("other").retry_after() == 0.0


def test_half_open_probe_success_closes_it(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers(reset_seconds=1.0)
    _trip(breakers, "ai:x")
    time.sleep(breakers.get("ai:x").retry_after() + 0.05)
    assert breakers.call("ai:x", lambda: "answer") == "answer"
    snap = breakers.get("ai:x").snapshot()
    assert (snap.state, snap.failures) == (CLOSED, 0)
    assert breakers.call("ai:x", lambda: 2) == 2


def test_half_open_probe_failure_reopens_it(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers(reset_seconds=1.0)
    _trip(breakers, "ai:x")
    time.sleep(breakers.get("ai:x").retry_after() + 0.05)
    with pytest.raises(ConnectionError):  # one trial call is made, and fails
        breakers.call("ai:x", _down)
    assert breakers.get("ai:x").snapshot().state == OPEN
    with pytest.raises(BreakerOpenError) as info:
        breakers.call("ai:x", lambda: None)
    assert 0.0 < info.value.retry_after <= 1.0  # a fresh reset timeout


def test_only_one_probe_at_a_time(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers(reset_seconds=1.0)
    other_worker = make_breakers(reset_seconds=1.0)  # its own objects, same store
    _trip(breakers, "gmail")
    time.sleep(breakers.get("gmail").retry_after() + 0.05)
    probing, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def probe() -> None:
        try:
            with breakers.guard("gmail"):
                probing.set()
                finish.wait(5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=probe)
    thread.start()
    assert probing.wait(5)
    assert breakers.get("gmail").snapshot().state == HALF_OPEN
    for contender in (breakers, other_worker):
        with pytest.raises(BreakerOpenError) as info:
            contender.call("gmail", lambda: None)
        assert 0 < info.value.retry_after <= 1.0
    finish.set()
    thread.join(5)
    assert not errors
    assert other_worker.get("gmail").snapshot().state == CLOSED
    assert other_worker.call("gmail", lambda: "ok") == "ok"


def test_states_lists_every_breaker(make_breakers: MakeBreakers) -> None:
    breakers = make_breakers(reset_seconds=30.0)
    _trip(breakers, "gmail")
    with pytest.raises(ConnectionError):
        breakers.call("ai:api.example.com", _down)
    breakers.call("ai:ok.example.com", lambda: None)
    states = {s.name: s for s in make_breakers(reset_seconds=30.0).states()}
    assert set(states) == {"gmail", "ai:api.example.com", "ai:ok.example.com"}
    gmail = states["gmail"]
    assert gmail.state == OPEN and gmail.opened_at is not None and 28.5 <= gmail.retry_after <= 30
    assert (states["ai:api.example.com"].state, states["ai:api.example.com"].failures) == (CLOSED, 1)
    assert (states["ai:ok.example.com"].failures, states["ai:ok.example.com"].retry_after) == (0, 0.0)


# ---------------------------------------------------------------- across processes

_WORKER = """
import sys
import redis
from pipeline.resilience.breakers import BreakerOpenError, Breakers, PostgresBreakerStore, RedisBreakerStore
kind, url, prefix, name, action = sys.argv[1:6]
if kind == "redis":
    store = RedisBreakerStore(redis.Redis.from_url(url), prefix=prefix)
else:
    from pipeline.storage.db import engine_for
    store = PostgresBreakerStore(engine_for(url))
breakers = Breakers(store, fail_max=3, reset_seconds=30)
def down():
    raise ConnectionError("reset")
if action == "trip":
    for _ in range(3):
        try:
            breakers.call(name, down)
        except ConnectionError:
            pass
    print(breakers.get(name).snapshot().state)
else:
    try:
        breakers.call(name, lambda: None)
        print("called")
    except BreakerOpenError as exc:
        print("refused", exc.retry_after)
"""


def _in_subprocess(spec: tuple[str, str, str], name: str, action: str) -> str:
    # Separate interpreters, not fork: as separate workers are.
    done = subprocess.run([sys.executable, "-c", _WORKER, *spec, name, action], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_breaker_opened_in_one_process_is_open_in_another(store_spec: tuple[str, str, str]) -> None:
    here = Breakers(_store(*store_spec), fail_max=FAIL_MAX, reset_seconds=30)
    assert here.call("gmail", lambda: 1) == 1  # this process saw it closed
    assert _in_subprocess(store_spec, "gmail", "trip") == OPEN
    with pytest.raises(BreakerOpenError) as info:
        here.call("gmail", lambda: 1)
    # Seconds pass between the trip and these checks (a subprocess starting on a busy machine): what
    # matters is that the wait counts down from the reset timeout opened elsewhere, not from zero.
    assert 15 <= info.value.retry_after <= 30
    verdict, retry_after = _in_subprocess(store_spec, "gmail", "check").split()
    assert verdict == "refused" and 10 <= float(retry_after) <= info.value.retry_after
    assert _in_subprocess(store_spec, "ai:elsewhere", "check") == "called"  # breakers are per dependency


# ---------------------------------------------------------------- the PostgreSQL storage itself


def test_postgres_storage_counts_atomically(engine: Engine) -> None:
    storage = CircuitPostgresStorage(engine, "gmail")

    def count() -> None:
        for _ in range(25):
            storage.increment_counter()

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.counter == 100
    storage.reset_counter()
    assert storage.counter == 0
    assert storage.state == CLOSED and storage.opened_at is None


def test_postgres_probe_lease_is_exclusive_and_expires(engine: Engine) -> None:
    storage = CircuitPostgresStorage(engine, "gmail")
    token = storage.claim_probe(0.3)
    assert token is not None
    assert CircuitPostgresStorage(engine, "gmail").claim_probe(0.3) is None
    time.sleep(0.35)
    second = CircuitPostgresStorage(engine, "gmail").claim_probe(10)
    assert second is not None
    storage.release_probe(token)  # the first holder's lease ran out: it must not free the second's
    assert storage.claim_probe(10) is None
    storage.release_probe(second)
    assert storage.claim_probe(10) is not None


def test_redis_probe_lease_is_exclusive_and_expires(redis_url: str, redis_prefix: str) -> None:
    store = RedisBreakerStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    token = store.claim_probe("gmail", 0.3)
    assert token is not None
    assert store.claim_probe("gmail", 0.3) is None
    time.sleep(0.35)
    second = store.claim_probe("gmail", 10)
    assert second is not None
    store.release_probe("gmail", token)
    assert store.claim_probe("gmail", 10) is None
    store.release_probe("gmail", second)
    assert store.claim_probe("gmail", 10) is not None


# ---------------------------------------------------------------- choosing a store


def _settings(**kwargs: object) -> Settings:
    base: dict[str, object] = {"redis_url": None, "broker_url": None, "breaker_fail_max": FAIL_MAX,
                               "breaker_reset_seconds": 30}  # not the session environment's
    return Settings(_env_file=None, **{**base, **kwargs})  # type: ignore[call-arg,arg-type]


def test_breakers_for_and_breaker_states(engine: Engine, redis_url: str) -> None:
    on_postgres = breakers_for(_settings(), engine)
    assert isinstance(on_postgres.store, PostgresBreakerStore)
    assert breakers_for(_settings(), engine) is on_postgres  # one per process
    _trip(on_postgres, "gmail")
    [state] = breaker_states(_settings(), engine)  # the stored gmail breaker, not a default one too
    assert (state.name, state.state) == ("gmail", OPEN)
    assert 25 <= state.retry_after <= 30

    name = f"test-{uuid.uuid4().hex}"
    on_redis = breakers_for(_settings(redis_url=redis_url, breaker_reset_seconds=7), engine)
    assert isinstance(on_redis.store, RedisBreakerStore)
    try:
        _trip(on_redis, name)
        found = {s.name: s for s in breaker_states(_settings(redis_url=redis_url, breaker_reset_seconds=7), engine)}
        assert found[name].state == OPEN and 5 <= found[name].retry_after <= 7
    finally:
        delete_redis_prefix(redis_url, on_redis.store.prefix + name)


def test_known_breakers_are_listed_closed_before_first_use(engine: Engine) -> None:
    """Gmail's and the configured AI endpoint's breakers exist for /metrics from the start."""
    name = f"ai-{uuid.uuid4().hex[:8]}.example:8080"
    settings = _settings(ai_base_url=f"http://{name}/v1")
    found = {s.name: s for s in breaker_states(settings, engine)}
    assert found[f"ai:{name}"].state == CLOSED and found[f"ai:{name}"].failures == 0
    assert "gmail" in found
