"""A pool child is replaced once it has grown too much since it became ready, not after a number of tasks.

billiard replaces a child after a task when `mem_rss()` exceeds the pool's `max_memory_per_child`
(Celery's `worker_max_memory_per_child`). Its `mem_rss` is the child's whole RSS, which counts what
every child starts with: torch and the embedding model, ~370 MiB before any task. Here, in each child,
it is the growth since the child was ready instead, so the setting bounds what a child's own tasks
leave behind.

Why growth: torch's allocations fragment a child's heap. Its first embed task takes it from ~370 MiB
to 450-510 (peaks up to 520), and each later one adds up to 30 to its peak (bench.memory with a
per-task trace; docs/PERFORMANCE.md, twelfth round). Replacing children after 25 tasks let a child
of a large import run five embed tasks and one of a small import two, so the larger import's worker
peaked higher. Bounding the growth makes every child's peak that of about one embed task, whatever
the mailbox's size.

Why trim first: most of that growth is heap that torch's tasks have freed but the C allocator keeps
(glibc returns memory to the system only from the top of its heap). Before each check the child hands
those free pages back (`malloc_trim`), so the check reads what its tasks left behind, not what they
once used. Without it most embed tasks ended with their child replaced (3-10 times in a 2k import),
each time a fork, fresh connections and a new child's first tasks paying for what the old one had
cached; with it none was, and a 2k import with a running worker took a median 21.3 s against 21.8,
faster in five alternating pairs of five (docs/PERFORMANCE.md, twenty-first round).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import psutil
from billiard import pool as billiard_pool

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op where the C library has none (musl, macOS)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


release_free_heap: Callable[[], None] = _malloc_trim()


def rss_kib() -> int:
    """This process's resident set now, in KiB (billiard's own measure when psutil is present)."""
    return int(psutil.Process().memory_info().rss // 1024)


class GrowthMeter:
    """What billiard's check after each task reads: KiB grown since the meter was made (the child ready)."""

    def __init__(self, limit_kib: int, rss: Callable[[], int] = rss_kib,
                 release: Callable[[], None] = release_free_heap) -> None:
        self.limit_kib = limit_kib  # only for the log line: billiard compares against its own setting
        self._rss = rss
        self._release = release
        self.baseline_kib = rss()

    def __call__(self) -> int:
        self._release()  # freed heap the allocator kept is not growth: hand it back before reading
        grown = self._rss() - self.baseline_kib
        if 0 < self.limit_kib < grown:  # 0: no limit, and billiard makes no check
            log.info("replacing this pool child: it grew %d MiB since it was ready (limit %d MiB)",
                     grown // 1024, self.limit_kib // 1024)
        # billiard reads 0 or less as "unable to determine memory usage" and logs an error.
        return max(grown, 1)


def measure_growth(limit_kib: int, module: object = billiard_pool, rss: Callable[[], int] = rss_kib,
                   release: Callable[[], None] = release_free_heap) -> GrowthMeter:
    """In a pool child that is ready for its first task: billiard's memory check reads this child's growth
    from now on, after handing back its free heap. `module` is billiard.pool, whose worker loop looks
    `mem_rss` up at each check."""
    meter = GrowthMeter(limit_kib, rss, release)
    module.mem_rss = meter  # type: ignore[attr-defined]
    return meter


__all__ = ["GrowthMeter", "measure_growth", "release_free_heap", "rss_kib"]
