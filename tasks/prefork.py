"""A prefork pool that stops as soon as its work is done, not on its threads' next wake-up.

billiard's pool threads sleep between checks in fixed steps: the supervisor 0.8 s, the timeout handler
1 s. A warm shutdown joins each of them, so even an idle pool took ~2.4 s to stop, every CLI command
that ran workers paid it, and a 10k import spent an eighth of its wall clock there (py-spy dumps of
the stopping worker; docs/PERFORMANCE.md, seventh round). Here those sleeps end early once the pool
is closing. Nothing else changes: the pool still closes, drains its results and joins its children
exactly as before, and until it closes it sleeps exactly as long.
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


__all__ = ["CLOCK", "PoolClock", "install"]
