"""A prefork pool that stops as soon as its work is done, not on its threads' next wake-up.

billiard's pool threads sleep between checks in fixed steps: the supervisor 0.8 s, the timeout handler
1 s; and each child, once it has told the pool it is leaving, sleeps 1 s more before it exits. A warm
shutdown joins all of them, so even an idle pool took ~2.4 s to stop, every CLI command that ran
workers paid it, and a 10k import spent an eighth of its wall clock there (py-spy dumps of the
stopping worker; docs/PERFORMANCE.md, seventh round). Here those sleeps end early once the pool is
closing, and a child leaving for any reason but its own replacement does not linger. Nothing else
changes: the pool still closes, drains its results and joins its children exactly as before, a
child still reports its exit before it goes, and until then every sleep lasts exactly as long.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from billiard import pool as billiard_pool


class PoolClock:
    """Stands in for the `time` module inside billiard.pool: `sleep` returns early once `closing` is set
    (in the process whose pool is closing; a forked child gets its own, unset, copy)."""

    def __init__(self) -> None:
        self.closing = threading.Event()

    def sleep(self, seconds: float) -> None:
        if seconds <= 0 or self.closing.is_set():
            time.sleep(0)  # still yields the GIL, as time.sleep(0) does
            return
        self.closing.wait(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


CLOCK = PoolClock()


def child_exiting(exitcode: int, clock: PoolClock = CLOCK) -> None:
    """In a child about to exit: skip billiard's last 1 s sleep unless the child is being replaced
    (EX_RECYCLE: the pool goes on, and that sleep lets it read the child's exit before the process
    is gone). Otherwise the pool is closing (its sentinel) or the child failed, and nothing waits on it."""
    if exitcode != billiard_pool.EX_RECYCLE:
        clock.closing.set()


def install(pool_class: Any = billiard_pool.Pool, module: Any = billiard_pool, clock: PoolClock = CLOCK) -> None:
    """Route `module`'s sleeps through `clock` and set it when a `pool_class` starts closing. Idempotent."""
    if isinstance(module.time, PoolClock):
        return
    module.time = clock
    for name in ("close", "terminate"):
        original = getattr(pool_class, name)

        def stopping(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            clock.closing.set()
            return _original(self, *args, **kwargs)

        setattr(pool_class, name, stopping)


__all__ = ["CLOCK", "PoolClock", "child_exiting", "install"]
