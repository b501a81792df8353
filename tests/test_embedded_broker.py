"""tasks.app's changes to kombu's SQLAlchemy transport, the embedded default's broker."""

from __future__ import annotations

from queue import Empty

import pytest
from celery.worker import state as worker_state
from kombu import Connection

import tasks.app  # noqa: F401  (it patches the transport)


class CountingCycle:
    """Stands in for the transport's round of its queues: a poll finds nothing until the `deliver_at`th."""

    def __init__(self, deliver_at: int = 0) -> None:
        self.polls = 0
        self.deliver_at = deliver_at

    def get(self, callback: object, timeout: float | None = None) -> None:
        self.polls += 1
        if self.polls != self.deliver_at:
            raise Empty()


def _drain(timeout: float | None, cycle: CountingCycle | None = None) -> tuple[int, bool]:
    """drain_events on a real transport of the embedded broker's kind: how many rounds of polls it made,
    and whether it ended finding nothing (TimeoutError: socket.timeout, what kombu raises)."""
    transport = Connection("sqla+postgresql+psycopg://postgres@/postgres").transport
    cycle = cycle or CountingCycle()
    transport.cycle = cycle
    try:
        transport.drain_events(object(), timeout=timeout)
    except TimeoutError:
        return cycle.polls, True
    return cycle.polls, False


def test_a_drain_polls_once_then_returns_not_after_the_two_seconds_celery_asks() -> None:
    # Celery's loop sees a stop request only between drains; kombu would poll for the whole timeout,
    # and with a short one it polled twice per interval (again at once on each new call).
    assert _drain(2.0) == (1, True)


def test_a_drain_that_finds_a_message_returns_it_at_once() -> None:
    assert _drain(2.0, CountingCycle(deliver_at=1)) == (1, False)


def test_a_caller_without_a_timeout_still_waits_for_a_message() -> None:
    assert _drain(None, CountingCycle(deliver_at=3)) == (3, False)


@pytest.mark.parametrize("flag, code", [("should_stop", 0), ("should_stop", 1), ("should_terminate", 0)])
def test_a_worker_asked_to_stop_polls_no_more(monkeypatch: pytest.MonkeyPatch, flag: str, code: int) -> None:
    # Celery's loop drains once more after its shutdown check raised; a warm stop's code is 0 (EX_OK).
    monkeypatch.setattr(worker_state, flag, code)
    assert _drain(2.0) == (0, True)
