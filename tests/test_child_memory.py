"""tasks.child_memory: a pool child is replaced once it has grown past the limit since it was ready, its
freed heap handed back first."""

from __future__ import annotations

import os
from types import SimpleNamespace

from billiard import pool as billiard_pool

from tasks.child_memory import GrowthMeter, measure_growth, rss_kib

MIB = 1024


def test_the_meter_reads_growth_since_ready_and_never_zero() -> None:
    readings = iter([380 * MIB, 379 * MIB, 470 * MIB])
    meter = GrowthMeter(100 * MIB, rss=lambda: next(readings))  # made once the model is loaded: 380 MiB
    assert meter() == 1  # smaller than when ready: billiard would read 0 as "unknown" and log an error
    assert meter() == 90 * MIB


def test_measure_growth_replaces_billiards_measure_in_its_module() -> None:
    module = SimpleNamespace(mem_rss=rss_kib)
    meter = measure_growth(50 * MIB, module, rss=lambda: 123)
    assert module.mem_rss is meter and meter.baseline_kib == 123 and meter.limit_kib == 50 * MIB


HELD: list[bytearray] = []


def _hold(mib: int) -> int:
    """Keeps `mib` MiB, every page written, for the rest of this process; returns its pid."""
    HELD.append(bytearray(mib * 2**20))
    return os.getpid()


def _measure_growth_from_here(limit_kib: int) -> None:
    measure_growth(limit_kib)  # what tasks.app does in every child, once its model is loaded


def test_a_real_pool_replaces_a_child_that_grew_past_the_limit_whatever_its_size() -> None:
    limit = 20 * MIB  # far below any child's whole RSS: billiard's own measure would replace every child
    assert rss_kib() > limit
    pool = billiard_pool.Pool(processes=1, max_memory_per_child=limit, initializer=_measure_growth_from_here,
                              initargs=(limit,))
    try:
        first = pool.apply_async(_hold, (0,)).get(timeout=60)
        assert pool.apply_async(_hold, (5,)).get(timeout=60) == first  # grown 5 MiB: kept
        assert pool.apply_async(_hold, (30,)).get(timeout=60) == first  # the task that grows it runs there
        replacement = pool.apply_async(_hold, (0,)).get(timeout=60)
        assert replacement != first  # then it was replaced
        assert pool.apply_async(_hold, (0,)).get(timeout=60) == replacement  # which starts from nothing grown
    finally:
        pool.terminate()


PINS: list[bytes] = []


def _use_and_free(mib: int) -> int:
    """Uses `mib` MiB in blocks of 100 KiB (the C heap, not mmap), keeps one block allocated after them
    so the heap cannot shrink from its top, frees the rest; returns its pid."""
    blocks = [bytes(100 * 1024) for _ in range(mib * 10)]
    PINS.append(bytes(100 * 1024))
    del blocks
    return os.getpid()


def test_a_real_pool_keeps_a_child_whose_tasks_freed_what_they_used() -> None:
    """Freed heap held by the C allocator is handed back before the check: no growth, no replacement."""
    limit = 20 * MIB
    pool = billiard_pool.Pool(processes=1, max_memory_per_child=limit, initializer=_measure_growth_from_here,
                              initargs=(limit,))
    try:
        first = pool.apply_async(_use_and_free, (0,)).get(timeout=60)
        assert pool.apply_async(_use_and_free, (60,)).get(timeout=60) == first
        assert pool.apply_async(_use_and_free, (0,)).get(timeout=60) == first  # kept: it holds nothing new
    finally:
        pool.terminate()


def test_the_meter_releases_free_heap_before_each_reading() -> None:
    calls: list[str] = []
    meter = GrowthMeter(100 * MIB, rss=lambda: calls.append("rss") or 1000, release=lambda: calls.append("release"))
    assert calls == ["rss"]  # the baseline
    meter()
    assert calls == ["rss", "release", "rss"]


def test_a_worker_child_measures_its_growth_once_ready(mailpipe_env: dict[str, str]) -> None:
    """What Celery sends in each pool child before its first task: tasks.app's handler loads the model,
    then hands billiard's check a meter of this child's growth, with the configured limit."""
    from celery.signals import worker_process_init

    from tasks.app import app

    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it leaves without running pytest's clean-up
        try:
            worker_process_init.send(sender=None)
            meter = billiard_pool.mem_rss
            ok = (isinstance(meter, GrowthMeter) and meter.limit_kib == app.conf.worker_max_memory_per_child
                  and 0 < meter() < 50 * MIB)
            os.write(writing, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(writing)
    _, status = os.waitpid(pid, 0)
    assert os.read(reading, 1) == b"1" and status == 0
    assert not isinstance(billiard_pool.mem_rss, GrowthMeter)  # this process's own is billiard's
