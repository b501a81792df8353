"""A prefork pool that stops as soon as its work is done, not on its threads' next wake-up.

billiard's pool threads sleep between checks in fixed steps: the supervisor 0.8 s, the timeout handler
1 s; and each child, once it has told the pool it is leaving, sleeps 1 s more before it exits. A warm
shutdown joins all of them, so even an idle pool took ~2.4 s to stop, every CLI command that ran
workers paid it, and a 10k import spent an eighth of its wall clock there (py-spy dumps of the
stopping worker; docs/PERFORMANCE.md, seventh round). Here those sleeps end early once the pool is
closing, and a child leaving for any reason but its own replacement does not linger. Nothing else
changes: the pool still closes, drains its results and joins its children exactly as before, a
child still reports its exit before it goes, and until then every sleep lasts exactly as long.

"Closing" is signalled once a pool thread's own state says so, so that a woken supervisor leaves
instead of forking one more child. And in billiard's own pool the supervisor then stays until its
children have exited: Celery gives every child a parent-death signal of SIGKILL, which Linux sends
when the thread that forked it ends, and the supervisor forks every replacement. Leaving at once, it
killed them; about one warm shutdown in five of a 2k import then hung until the CLI killed the pool
30 s later (a child had died holding the task queue's read lock; see outlive_children).

And a child is replaced without leaving a core idle longer than it must. Children are replaced once
they have grown (tasks.child_memory): after about every embed task with the local embedder, 5 to 8
times in a 2k import. Between the replaced child's last task and its successor's first, billiard's
pool waited twice, each wait a fixed step: the child for the pool to have read its last result
(0.1 s steps, GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL: the pool reads it within a millisecond,
but the child looks first, straight after sending it), and the supervisor, which replaces a child
that has left, for its next look (0.8 s). Here the child's step is short (CONSUMED_STEP), and the
supervisor, which still sleeps as long as billiard asks while no child is leaving, is woken by the
pool's result handler when a child says it is leaving and then looks every SUPERVISOR_STEP until
it has been replaced. A child that dies without saying so (a signal: SIGKILL, the OOM killer) is found
at the supervisor's next look, within 0.8 s as in billiard's own pool (within 0.05 s while the
supervisor looked in steps of that all the time). Celery's AsynPool (Redis) has no supervisor thread
and is unaffected.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

from billiard import pool as billiard_pool

log = logging.getLogger(__name__)

# Once closing, a sleep lasts at most this: the timeout handler loops on 1 s sleeps until its pool is
# finalized, and with no sleep at all it spun a core while the children finished their last tasks.
CLOSING_STEP = 0.02
# The supervisor's step between looks while a child is leaving (otherwise billiard's own 0.8 s). A look
# is a non-blocking wait on each child and a pass over the jobs in flight, ~80 µs: at this step all the
# time, an idle pool's supervisor took 0.8% of a core (ad-hoc, per-thread CPU ticks over 10 s).
SUPERVISOR_STEP = 0.01
# How long after a child said it is leaving the supervisor keeps looking at that step: the pool sends the
# child its termination signal as it reads the message, so it is gone well within this.
LEAVING_WINDOW = 0.5
# A child being replaced polls a shared counter, at this step, until the pool has read its last result,
# for as long in all as billiard allows (30 s): a read of shared memory, against 0.1 s steps of which
# the first was nearly always taken.
CONSUMED_STEP = 0.002


class PoolClock:
    """Stands in for the `time` module inside billiard.pool: `sleep` returns early once `closing` is set
    (in the process whose pool is closing; a forked child starts with a new, unset, one). In a thread of
    `stepping` (install: billiard's Supervisor) it also returns when a child says it is leaving
    (`child_leaving`), and then lasts at most SUPERVISOR_STEP for LEAVING_WINDOW."""

    def __init__(self) -> None:
        self.closing = threading.Event()
        self.stepping: tuple[type, ...] = ()
        self.left_at = -math.inf  # monotonic time of the last child_leaving
        self._wake = threading.Event()  # set by close and child_leaving: ends the supervisor's sleep

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            time.sleep(0)  # still yields the GIL, as time.sleep(0) does
        elif self.closing.is_set():
            time.sleep(min(seconds, CLOSING_STEP))
        elif self.stepping and isinstance(threading.current_thread(), self.stepping):
            self._supervise(seconds)
        else:
            self.closing.wait(seconds)

    def _supervise(self, seconds: float) -> None:
        """The supervisor's sleep between looks: `seconds` while no child is leaving, SUPERVISOR_STEP while
        one may not have been replaced yet. Ends when the pool starts closing."""
        deadline = time.monotonic() + seconds
        while not self.closing.is_set():
            now = time.monotonic()
            if now - self.left_at < LEAVING_WINDOW:
                self.closing.wait(min(SUPERVISOR_STEP, max(0.0, deadline - now)))
                return
            if now >= deadline:
                return
            self._wake.wait(deadline - now)
            # left_at and closing are set before _wake: a wake-up cleared here is seen by the loop's checks.
            self._wake.clear()

    def close(self) -> None:
        """The pool is closing: every sleep in this process ends (and from now on is short)."""
        self.closing.set()
        self._wake.set()

    def child_leaving(self) -> None:
        """In the pool's process, when a child says it is leaving (billiard's DEATH message): the supervisor
        looks for it every SUPERVISOR_STEP until LEAVING_WINDOW has passed."""
        self.left_at = time.monotonic()
        self._wake.set()

    def reset(self) -> None:
        """New Events: a child forked while a pool thread was inside `wait` would inherit its lock held."""
        self.closing = threading.Event()
        self._wake = threading.Event()
        self.left_at = -math.inf

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


CLOCK = PoolClock()


def child_exiting(exitcode: int, clock: PoolClock = CLOCK) -> None:
    """In a child about to exit: skip billiard's last 1 s sleep unless the child is being replaced
    (EX_RECYCLE: the pool goes on, and that sleep lets it read the child's exit before the process
    is gone). Otherwise the pool is closing (its sentinel) or the child failed, and nothing waits on it."""
    if exitcode != billiard_pool.EX_RECYCLE:
        clock.close()


def outlive_children(supervisor: Any, blocking_pool: Any = billiard_pool.Pool) -> None:
    """After billiard's supervisor loop ends (its pool closing), stay until every child has exited:
    in billiard's own pool (`blocking_pool`, the one Celery runs on a broker without an event loop, as
    the embedded SQL broker is), where closing has sent the children their sentinels already.

    The supervisor thread forks every replacement child, and Celery gives each child a parent-death
    signal of SIGKILL, which Linux sends when the *thread* that forked it ends. Leaving at once, the
    supervisor killed the children it had forked: a task running in one was lost to the warm shutdown
    meant to finish it, and a child waiting for its next task died holding the task queue's read lock,
    on which billiard's last clean-up then hung (py-spy; exit codes -9). Terminating ends the wait: the
    children are about to be terminated anyway, after this thread is joined. Celery's AsynPool (Redis)
    starts no supervisor thread (billiard's threads=False): its main thread forks every child, so their
    parent-death signal comes only with the worker's own end (tests/test_prefork.py: a replacement
    child finishes its task on a warm shutdown)."""
    pool = supervisor.pool
    if type(pool) is not blocking_pool:
        return
    while supervisor._state != billiard_pool.TERMINATE and pool._state != billiard_pool.TERMINATE:
        if _all_exited(list(pool._pool)):
            return
        time.sleep(CLOSING_STEP)


def _all_exited(processes: list[Any]) -> bool:
    """Every one of billiard's processes here either never started or has exited."""
    return all(p._popen is None or p.exitcode is not None for p in processes)


LOCK_WAIT = 0.5


def help_stuff_finish(inqueue: Any, task_handler: Any, pool: list[Any]) -> None:
    """billiard's `Pool._help_stuff_finish` (the pool's last clean-up, at the worker's exit), except that a
    task-queue read lock held by a child that is gone no longer hangs it forever.

    A child holds that lock while it waits for its next task, and one that dies waiting (a signal) never
    releases it. Once every child has exited, nothing else reads the queue: go on without the lock."""
    while not inqueue._rlock.acquire(timeout=LOCK_WAIT):
        if _all_exited(pool):
            log.warning("the pool's task queue was left locked by a child that is gone (exit codes %s); "
                        "finishing without it", [p.exitcode for p in pool])
            break
    while task_handler.is_alive() and inqueue._reader.poll():
        inqueue._reader.recv()
        time.sleep(0)


def install(thread_class: Any = billiard_pool.PoolThread, module: Any = billiard_pool,
            clock: PoolClock = CLOCK, pool_class: Any = billiard_pool.Pool,
            supervisor_class: Any = billiard_pool.Supervisor,
            result_handler_class: Any = billiard_pool.ResultHandler) -> None:
    """Route `module`'s sleeps through `clock`, and close it when one of the pool's threads (`thread_class`)
    is told to close or terminate: after the thread's own state has changed, so the supervisor, woken, sees
    it and leaves instead of forking one more child while its pool closes. The result handler tells the
    clock when a child says it is leaving, so that the supervisor replaces it within SUPERVISOR_STEP; and
    a child being replaced waits for its last result to be read in short steps too (CONSUMED_STEP), as
    long in all as before. Idempotent."""
    if isinstance(module.time, PoolClock):
        return
    patience = module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT * module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL
    module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL = CONSUMED_STEP
    module.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT = round(patience / CONSUMED_STEP)
    module.time = clock
    clock.stepping = (supervisor_class,)
    pool_class._help_stuff_finish = staticmethod(help_stuff_finish)
    supervise = supervisor_class.body

    def body(self: Any) -> None:
        supervise(self)
        outlive_children(self, pool_class)

    supervisor_class.body = body
    make_methods = result_handler_class._make_methods

    def with_leaving(self: Any) -> None:
        make_methods(self)
        on_death = self.state_handlers[module.DEATH]  # the dict its message loop reads

        def death(*args: Any, _on_death: Any = on_death) -> None:
            try:
                _on_death(*args)  # sends the child its termination signal
            finally:
                clock.child_leaving()

        self.state_handlers[module.DEATH] = death

    result_handler_class._make_methods = with_leaving
    os.register_at_fork(after_in_child=clock.reset)
    for name in ("close", "terminate"):
        original = getattr(thread_class, name)

        def stopping(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            try:
                return _original(self, *args, **kwargs)
            finally:
                clock.close()

        setattr(thread_class, name, stopping)


__all__ = ["CLOCK", "CONSUMED_STEP", "LEAVING_WINDOW", "SUPERVISOR_STEP", "PoolClock", "child_exiting", "install"]
