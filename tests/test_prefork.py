"""tasks.prefork: billiard's pool threads stop sleeping once their pool is closing."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from billiard import pool as billiard_pool

import tasks.app  # noqa: F401  (installs the clock, as every worker does)
from tasks.prefork import CLOCK, PoolClock, child_exiting, install


def test_a_sleep_ends_when_the_pool_starts_closing() -> None:
    clock = PoolClock()
    sleeper = threading.Thread(target=clock.sleep, args=(60.0,))
    sleeper.start()
    time.sleep(0.05)
    assert sleeper.is_alive()  # until then it sleeps as time.sleep would
    clock.closing.set()
    sleeper.join(timeout=10)
    assert not sleeper.is_alive()
    assert clock.monotonic is time.monotonic  # the rest of the time module is the real one


def test_a_child_lingers_only_when_it_is_being_replaced() -> None:
    replaced, leaving = PoolClock(), PoolClock()
    child_exiting(billiard_pool.EX_RECYCLE, replaced)  # the pool goes on: its 1 s sleep stays
    child_exiting(billiard_pool.EX_FAILURE, leaving)  # the pool's sentinel (or a failure): no sleep
    assert not replaced.closing.is_set() and leaving.closing.is_set()


def test_install_wraps_close_and_terminate_once() -> None:
    calls: list[str] = []

    class Pool:
        def close(self) -> str:
            calls.append("close")
            return "closed"

        def terminate(self) -> None:
            calls.append("terminate")

    module, clock = SimpleNamespace(time=time), PoolClock()
    install(Pool, module, clock)
    install(Pool, module, clock)  # a second install changes nothing
    assert module.time is clock and not clock.closing.is_set()
    assert Pool().close() == "closed" and calls == ["close"]  # the original still runs, once
    assert clock.closing.is_set()
    Pool().terminate()
    assert calls == ["close", "terminate"]


def test_a_real_pool_closes_and_joins_with_the_clock_installed() -> None:
    assert billiard_pool.time is CLOCK  # tasks.app installed it
    pool = billiard_pool.Pool(processes=1, timeout=60, soft_timeout=50)  # timeouts: a timeout handler too
    try:
        assert pool.apply_async(pow, (2, 10)).get(timeout=30) == 1024
        pool.close()
        assert CLOCK.closing.is_set()
        pool.join()
        assert not pool._worker_handler.is_alive()
        pool.terminate()  # what stops the timeout handler
        assert not pool._timeout_handler.is_alive()
    finally:
        pool.terminate()
        CLOCK.closing.clear()  # this test process's other pools sleep as before
