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

And a child is replaced without a core left idle longer than it must be. Children are replaced once
they have grown (tasks.child_memory): after about every embed task with the local embedder, 5 to 8
times in a 2k import. Between the replaced child's last task and its successor's first, billiard's
pool waited twice, each wait a fixed step: the child for the pool to have read its last result
(0.1 s steps, GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL; the pool reads it within a millisecond,
but the child looks first, straight after sending it), and the supervisor, which replaces a child
that has left, for its next look (0.8 s). Here both steps are short (CONSUMED_STEP, SUPERVISOR_STEP).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from billiard import pool as billiard_pool

log = logging.getLogger(__name__)

# Once closing, a sleep lasts at most this: the timeout handler loops on 1 s sleeps until its pool is
# finalized, and with no sleep at all it spun a core while the children finished their last tasks.
CLOSING_STEP = 0.02
# The supervisor's step between looks for children that left (billiard's: 0.8 s). A look is a
# non-blocking wait on each child and a pass over the jobs in flight: at 100 a second, ~0.4% of a core
# (bench.replacement measures both steps' effect).
SUPERVISOR_STEP = 0.01
# A child being replaced polls a shared counter, at this step, until the pool has read its last result,
# for as long in all as billiard allows (30 s): a read of shared memory, against 0.1 s steps of which
# the first was nearly always taken.
CONSUMED_STEP = 0.002


class PoolClock:
    """Stands in for the `time` module inside billiard.pool: `sleep` returns early once `closing` is set
    (in the process whose pool is closing; a forked child starts with a new, unset, one), and lasts at
    most SUPERVISOR_STEP in a thread of `stepping` (install: billiard's Supervisor)."""

    def __init__(self) -> None:
        self.closing = threading.Event()
        self.stepping: tuple[type, ...] = ()

    def sleep(self, seconds: float) -> None:
        if self.stepping and isinstance(threading.current_thread(), self.stepping):
            seconds = min(seconds, SUPERVISOR_STEP)
        if seconds <= 0:
            time.sleep(0)  # still yields the GIL, as time.sleep(0) does
        elif self.closing.is_set():
            time.sleep(min(seconds, CLOSING_STEP))
        else:
            self.closing.wait(seconds)

    def reset(self) -> None:
        """A new Event: a child forked while a pool thread was inside `wait` would inherit its lock held."""
        self.closing = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


CLOCK = PoolClock()


def child_exiting(exitcode: int, clock: PoolClock = CLOCK) -> None:
    """In a child about to exit: skip billiard's last 1 s sleep unless the child is being replaced
    (EX_RECYCLE: the pool goes on, and that sleep lets it read the child's exit before the process
    is gone). Otherwise the pool is closing (its sentinel) or the child failed, and nothing waits on it."""
    if exitcode != billiard_pool.EX_RECYCLE:
        clock.closing.set()


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
            supervisor_class: Any = billiard_pool.Supervisor) -> None:
    """Route `module`'s sleeps through `clock`, and set it when one of the pool's threads (`thread_class`)
    is told to close or terminate: after the thread's own state has changed, so the supervisor, woken, sees
    it and leaves instead of forking one more child while its pool closes. The supervisor sleeps in short
    steps (SUPERVISOR_STEP), and a child being replaced waits for its last result to be read in short
    steps too (CONSUMED_STEP), as long in all as before. Idempotent."""
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
    os.register_at_fork(after_in_child=clock.reset)
    for name in ("close", "terminate"):
        original = getattr(thread_class, name)

        def stopping(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            try:
                return _original(self, *args, **kwargs)
            finally:
                clock.closing.set()

        setattr(thread_class, name, stopping)


__all__ = ["CLOCK", "CONSUMED_STEP", "SUPERVISOR_STEP", "PoolClock", "child_exiting", "install"]
