"""tasks.child_memory: a pool child is replaced once it has grown past the limit since it was ready."""

from __future__ import annotations

import os
from types import SimpleNamespace

from billiard import pool as billiard_pool

from pipeline.settings import Settings
from tasks.child_memory import GrowthMeter, measure_growth, rss_kib
from tasks.config import celery_config

MIB = 1024


def test_the_meter_reads_growth_since_ready_and_never_zero() -> None:
    readings = iter([400 * MIB, 380 * MIB, 379 * MIB, 470 * MIB])
    meter = GrowthMeter(100 * MIB, rss=lambda: next(readings))
    meter.ready()  # 380 MiB: the model loaded
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


def test_the_growth_limit_is_small_with_torchs_heap_and_a_leak_guard_otherwise() -> None:
    def limit(**settings: object) -> object:
        return celery_config(Settings(**settings), "postgresql://d")["worker_max_memory_per_child"]

    assert limit(embedder="local") == 100 * MIB
    assert limit(embedder="none") == limit(embedder="openai") == 1024 * MIB
    assert limit(embedder="local", worker_max_growth_mib=300) == 300 * MIB  # an explicit choice wins
