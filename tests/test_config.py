"""The Celery configuration built from Settings (tasks.config)."""

from __future__ import annotations

from pipeline.settings import Settings
from tasks.config import celery_config


def test_prefetch_is_one_per_child_except_on_the_polling_embedded_broker() -> None:
    assert celery_config(Settings(broker_url="redis://r:6379/0"), "postgresql://d")["worker_prefetch_multiplier"] == 1
    embedded = celery_config(Settings(broker_url=None), "postgresql://d")
    assert embedded["broker_url"].startswith("sqla+") and embedded["worker_prefetch_multiplier"] == 2
    assert embedded["task_acks_late"] is True  # a reserved message is still acknowledged only after its task
    chosen = celery_config(Settings(broker_url=None, worker_prefetch_multiplier=1), "postgresql://d")
    assert chosen["worker_prefetch_multiplier"] == 1


def test_children_are_replaced_after_a_number_of_tasks_only_when_chosen() -> None:
    def per_child(**settings: object) -> object:
        return celery_config(Settings(**settings), "postgresql://d")["worker_max_tasks_per_child"]

    # Their growth replaces them instead (tests/test_child_memory.py).
    assert per_child(embedder="local") is None
    assert per_child(embedder="none") is None and per_child(embedder="openai") is None
    assert per_child(embedder="none", worker_max_tasks_per_child=7) == 7  # an explicit choice wins
    assert per_child(embedder="local", worker_max_tasks_per_child=0) is None  # 0: never replaced


def test_the_growth_limit_is_small_with_torchs_heap_and_a_leak_guard_otherwise() -> None:
    def limit(**settings: object) -> object:
        return celery_config(Settings(**settings), "postgresql://d")["worker_max_memory_per_child"]

    assert limit(embedder="local") == 100 * 1024
    assert limit(embedder="none") == limit(embedder="openai") == 1024 * 1024
    assert limit(embedder="local", worker_max_growth_mib=300) == 300 * 1024  # an explicit choice wins
