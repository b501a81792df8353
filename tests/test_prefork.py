"""tasks.prefork: billiard's pool threads stop sleeping once their pool is closing, and its children outlive them."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from billiard import pool as billiard_pool
from celery import Celery

import tasks.app  # noqa: F401  (installs the clock, as every worker does)
from tasks.prefork import (
    CLOCK,
    CLOSING_STEP,
    CONSUMED_STEP,
    LEAVING_WINDOW,
    SUPERVISOR_STEP,
    PoolClock,
    child_exiting,
    help_stuff_finish,
    install,
    outlive_children,
)
from tests.conftest import REDIS_URL, CeleryProcess, wait_for


def _billiard_like_module() -> SimpleNamespace:
    """What install reads and sets in billiard.pool, at billiard's own values."""
    return SimpleNamespace(time=time, DEATH=billiard_pool.DEATH, GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT=300,
                           GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL=0.1)


def _result_handler(deaths: list[tuple[int, int]]) -> type:
    """billiard's ResultHandler as install sees it: `_make_methods` builds the handlers of the children's messages."""

    def make_methods(self: Any) -> None:
        self.state_handlers = {billiard_pool.DEATH: lambda pid, code: deaths.append((pid, code))}

    return type("ResultHandler", (), {"_make_methods": make_methods})


def _install(clock: PoolClock, thread: type | None = None, module: SimpleNamespace | None = None,
             result_handler: type | None = None) -> SimpleNamespace:
    """install on stand-ins for billiard's classes and module (the real ones are installed by tasks.app)."""
    module = module or _billiard_like_module()
    thread = thread or type("Thread", (), {"close": lambda self: None, "terminate": lambda self: None})
    install(thread, module, clock, type("Pool", (), {}), type("Supervisor", (), {"body": id}),
            result_handler or _result_handler([]))
    return module


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


def test_once_closing_a_sleep_is_short_but_not_a_spin() -> None:
    clock = PoolClock()
    clock.closing.set()
    started = time.monotonic()
    for _ in range(5):
        clock.sleep(60.0)  # the timeout handler's loop, once its pool closes
    elapsed = time.monotonic() - started
    assert 5 * CLOSING_STEP * 0.9 <= elapsed < 5.0  # each waits a step: no thread spins a core meanwhile


class _Supervisor(threading.Thread):
    pass


def _supervisor_sleeping(clock: PoolClock, seconds: float = 60.0, times: int = 1) -> threading.Thread:
    thread = _Supervisor(target=lambda: [clock.sleep(seconds) for _ in range(times)])
    thread.start()
    return thread


def test_the_supervisor_sleeps_as_asked_until_a_child_is_leaving() -> None:
    clock = PoolClock()
    clock.stepping = (_Supervisor,)
    supervisor = _supervisor_sleeping(clock)
    other = threading.Thread(target=clock.sleep, args=(60.0,))
    other.start()
    time.sleep(0.3)
    assert supervisor.is_alive()  # no child leaving: billiard's own sleep, no looks at an idle pool
    clock.child_leaving()  # the result handler read a child's DEATH
    supervisor.join(timeout=10)
    assert not supervisor.is_alive()  # woken: it looks for the child to replace
    assert other.is_alive()  # the timeout handler and the children keep their own sleeps
    clock.close()
    other.join(timeout=10)
    assert not other.is_alive()
    assert billiard_pool.time is CLOCK and CLOCK.stepping == (billiard_pool.Supervisor,)  # tasks.app installed it


def test_while_a_child_is_leaving_the_supervisor_looks_every_step_then_sleeps_as_asked_again() -> None:
    clock = PoolClock()
    clock.stepping = (_Supervisor,)
    clock.child_leaving()
    stepping = _supervisor_sleeping(clock, times=5)  # five of billiard's 60 s sleeps, each cut to a step
    stepping.join(timeout=10)
    assert not stepping.is_alive()
    assert 5 * SUPERVISOR_STEP < LEAVING_WINDOW < 0.8
    clock.left_at -= LEAVING_WINDOW  # the window has passed: the child was replaced long since
    asleep = _supervisor_sleeping(clock)
    time.sleep(0.3)
    assert asleep.is_alive()
    clock.close()  # the pool closing still ends it
    asleep.join(timeout=10)
    assert not asleep.is_alive()


def test_the_result_handler_tells_the_clock_when_a_child_says_it_is_leaving() -> None:
    clock, deaths = PoolClock(), []
    handler_class = _result_handler(deaths)
    _install(clock, result_handler=handler_class)
    handler = handler_class()
    handler._make_methods()
    assert clock.left_at == -math.inf
    handler.state_handlers[billiard_pool.DEATH](123, billiard_pool.EX_RECYCLE)
    assert deaths == [(123, billiard_pool.EX_RECYCLE)]  # billiard's own handler still ran (it signals the child)
    assert time.monotonic() - clock.left_at < LEAVING_WINDOW


def test_install_sets_the_clock_after_a_pool_thread_has_changed_state_once() -> None:
    seen: list[tuple[str, bool]] = []
    clock = PoolClock()

    class Thread:
        _state = "run"

        def close(self) -> str:
            self._state = "close"
            seen.append(("close", clock.closing.is_set()))
            return "closed"

        def terminate(self) -> None:
            self._state = "terminate"
            seen.append(("terminate", clock.closing.is_set()))

    module = _install(clock, Thread)
    _install(clock, Thread, module)  # a second install changes nothing
    assert module.time is clock and not clock.closing.is_set()
    # The original runs once, and before the clock wakes anyone: the supervisor, woken, must find its
    # state changed already, or it forks another child into a pool that is closing.
    assert Thread().close() == "closed" and seen == [("close", False)]
    assert clock.closing.is_set()
    Thread().terminate()
    assert seen == [("close", False), ("terminate", True)]


def test_a_child_being_replaced_waits_for_its_last_result_in_short_steps_as_long_as_before() -> None:
    module = _install(PoolClock())
    _install(PoolClock(), module=module)  # a second install changes nothing
    assert module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL == CONSUMED_STEP
    assert CONSUMED_STEP < 0.1
    assert round(module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT * CONSUMED_STEP, 6) == 30.0  # the patience kept
    assert billiard_pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL == CONSUMED_STEP  # tasks.app installed it


def test_a_real_pool_replaces_a_grown_child_after_each_task_and_loses_no_result() -> None:
    """Every child outgrows a bound of 1 KiB after its first task (as a child that embedded outgrows
    tasks.child_memory's): with the short steps installed, each task still runs in a new child and
    each result reaches the pool."""
    assert billiard_pool.time is CLOCK  # tasks.app installed it
    pool = billiard_pool.Pool(processes=1, max_memory_per_child=1)
    try:
        told = CLOCK.left_at
        pids = [pool.apply_async(os.getpid).get(timeout=30) for _ in range(5)]
        assert CLOCK.left_at > told  # billiard's own result handler told the clock
        pool.close()
        pool.join()
    finally:
        pool.terminate()
        CLOCK.closing.clear()
    assert len(set(pids)) == 5


def test_a_forked_child_starts_with_a_clock_that_is_not_closing_nor_woken() -> None:
    clock = PoolClock()
    _install(clock)
    clock.child_leaving()
    clock.close()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running pytest's teardown
        fresh = not clock.closing.is_set() and not clock._wake.is_set() and clock.left_at == -math.inf
        os.write(write, b"0" if fresh else b"1")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"0"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


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


def _take_the_read_lock(queue: Any, locked: Any) -> None:
    queue._rlock.acquire()  # what a child waiting for its next task holds
    locked.set()
    time.sleep(60)


def test_the_last_clean_up_goes_on_once_the_child_holding_the_queue_lock_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert billiard_pool.Pool._help_stuff_finish is help_stuff_finish  # tasks.app installed it
    ctx = billiard_pool.get_context("fork")
    queue, locked = ctx.SimpleQueue(), ctx.Event()
    child = ctx.Process(target=_take_the_read_lock, args=(queue, locked), daemon=True)
    child.start()
    assert locked.wait(30)
    finished = threading.Event()
    no_task_handler = SimpleNamespace(is_alive=lambda: False)
    helper = threading.Thread(target=lambda: (help_stuff_finish(queue, no_task_handler, [child]), finished.set()),
                              daemon=True)
    helper.start()
    time.sleep(1.5)
    assert not finished.is_set()  # while the child lives it waits for the lock, as billiard's does
    os.kill(child.pid, signal.SIGKILL)  # dies holding it: billiard's own would wait forever
    child.join(10)
    helper.join(10)
    assert finished.is_set()
    assert "left locked by a child that is gone (exit codes [-9])" in caplog.text


def _parent_death_signal_as_celery_sets_it() -> None:
    from celery import platforms

    platforms.set_pdeathsig("SIGKILL")  # what Celery's process_initializer does in every child


def _pid_after(marker: str, seconds: float) -> int:
    Path(marker).write_text("started")
    time.sleep(seconds)
    return os.getpid()


def test_a_child_the_supervisor_forked_finishes_its_task_when_the_pool_closes(tmp_path: Path) -> None:
    assert billiard_pool.Supervisor.body.__name__ == "body" and outlive_children  # tasks.app installed it
    pool = billiard_pool.Pool(processes=1, maxtasksperchild=1, initializer=_parent_death_signal_as_celery_sets_it)
    try:
        first = pool.apply_async(os.getpid).get(timeout=30)  # that child leaves; the supervisor forks the next
        marker = tmp_path / "started"
        busy = pool.apply_async(_pid_after, (str(marker), 1.5))
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the replacement child never started the task"
            time.sleep(0.02)
        pool.close()  # a warm shutdown: the running task must finish
        pool.join()
        # Killed with the supervisor thread that forked it, the child would never answer (WorkerLostError).
        assert busy.get(timeout=30) != first
    finally:
        pool.terminate()
        CLOCK.closing.clear()


@pytest.mark.integration
def test_a_redis_worker_lets_a_replacement_child_finish_its_task_on_warm_shutdown(
        mailpipe_env: dict[str, str], tmp_path: Path) -> None:
    """On Redis Celery runs its AsynPool, which forks replacement children from the main thread (it
    starts no supervisor thread): a warm shutdown must not kill one mid-task, as billiard's own pool's
    supervisor did (see outlive_children)."""
    base, _, _db = REDIS_URL.rpartition("/")
    broker = f"{base}/9"  # no other test publishes here
    redis.Redis.from_url(broker).flushdb()
    env = {**mailpipe_env, "MAILPIPE_BROKER_URL": broker, "MAILPIPE_EMBEDDER": "none"}
    worker = CeleryProcess(["worker", "-Q", "ingest", "-c", "1", "--pool", "prefork", "--max-tasks-per-child", "1",
                            "-l", "INFO", "-n", f"warm-{time.time_ns()}@%h", "--without-gossip", "--without-mingle"],
                           env, tmp_path / "worker.log", ready="ready.",
                           program=("-m", "celery", "-A", "tests.slow_task_app"))
    client = Celery(broker=broker)
    with client.connection() as conn:  # what makes Celery's worker run its event loop and AsynPool
        assert conn.transport.implements.asynchronous
    worker.start()
    try:
        client.send_task("tests.write_pid_after", (str(tmp_path), "first", 0), queue="ingest")
        # That child leaves after its one task: the next one is a replacement.
        wait_for((tmp_path / "first").exists, "the first task")
        client.send_task("tests.write_pid_after", (str(tmp_path), "second", 2.0), queue="ingest")
        wait_for((tmp_path / "second.started").exists, "the second task's start")
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGTERM)  # warm shutdown of the main process only
        worker.proc.wait(60)
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert (tmp_path / "second").read_text() == (tmp_path / "second.started").read_text()
    assert (tmp_path / "second").read_text() != (tmp_path / "first").read_text()
    assert "WorkerLostError" not in log and "SIGKILL" not in log, log[-3000:]

