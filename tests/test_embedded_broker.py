"""tasks.app's changes to kombu's SQLAlchemy transport, the embedded default's broker."""

from __future__ import annotations

from queue import Empty

import pytest
from celery.worker import state as worker_state
from kombu import Connection

import tasks.app  # noqa: F401  (it patches the transport)


class CountingCycle:
    """Stands in for the transport's round of its queues: every poll finds nothing."""

    def __init__(self) -> None:
        self.polls = 0

    def get(self, callback: object, timeout: float | None = None) -> None:
        self.polls += 1
        raise Empty()


def _drain(timeout: float) -> int:
    """drain_events on a real transport of the embedded broker's kind, its queues empty: how many polls."""
    transport = Connection("sqla+postgresql+psycopg://postgres@/postgres").transport
    cycle = CountingCycle()
    transport.cycle = cycle
    with pytest.raises(TimeoutError):  # socket.timeout, what kombu raises
        transport.drain_events(object(), timeout=timeout)
    return cycle.polls


def test_a_worker_that_is_idle_polls_its_queues() -> None:
    assert _drain(0.01) >= 1


@pytest.mark.parametrize("flag, code", [("should_stop", 0), ("should_stop", 1), ("should_terminate", 0)])
def test_a_worker_asked_to_stop_polls_no_more(monkeypatch: pytest.MonkeyPatch, flag: str, code: int) -> None:
    # Celery's loop drains once more after its shutdown check raised; a warm stop's code is 0 (EX_OK).
    monkeypatch.setattr(worker_state, flag, code)
    assert _drain(2.0) == 0


def test_a_drain_lasts_one_poll_interval_not_the_two_seconds_celery_asks() -> None:
    # Celery's loop sees a stop request only between drains; kombu would poll for the whole timeout.
    polls = _drain(2.0)
    assert 1 <= polls <= 3, polls
