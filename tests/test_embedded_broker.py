"""tasks.embedded_broker: its changes to kombu's SQLAlchemy transport, the embedded default's broker."""

from __future__ import annotations

from queue import Empty

import pytest
from celery.worker import state as worker_state
from kombu import Connection
from sqlalchemy import create_engine, text

import tasks.app  # noqa: F401  (it installs tasks.embedded_broker)


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


# ---------------------------------------------------------------- getting and putting, on a real PostgreSQL


@pytest.fixture
def broker_url(empty_database: str) -> str:
    # A lock waited for fails after 3 s instead of hanging the test (kombu's own get waited).
    engine = create_engine(empty_database, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{engine.url.database}" SET lock_timeout = \'3s\''))
    finally:
        engine.dispose()
    return "sqla+" + empty_database


def _rows(url: str) -> list[tuple[str, bool, int, bool]]:
    """(queue, visible, version, has a timestamp) of every message, oldest first."""
    engine = create_engine(url.removeprefix("sqla+"))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT q.name, m.visible, m.version, m.timestamp IS NOT NULL FROM kombu_message m "
                "JOIN kombu_queue q ON q.id = m.queue_id ORDER BY m.id"))]
    finally:
        engine.dispose()


def test_messages_come_back_oldest_first_each_once_and_hidden_as_kombu_hid_them(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for n in range(3):
            channel._put("normalize", {"n": n})
        channel._put("ai", {"n": "other queue"})
        assert [channel._get("normalize")["n"] for _ in range(3)] == [0, 1, 2]
        with pytest.raises(Empty):
            channel._get("normalize")
        assert channel._get("ai") == {"n": "other queue"}
    # Taken messages stay as rows, hidden, their version bumped and their timestamp set: kombu's ORM update.
    assert _rows(broker_url) == [("normalize", False, 2, True)] * 3 + [("ai", False, 2, True)]


def test_two_consumers_never_take_the_same_message(broker_url: str) -> None:
    with Connection(broker_url) as first, Connection(broker_url) as second:
        a, b = first.default_channel, second.default_channel
        for n in range(20):
            a._put("ingest", {"n": n})
        taken: list[int] = []
        for _ in range(10):
            taken += [a._get("ingest")["n"], b._get("ingest")["n"]]
        assert sorted(taken) == list(range(20))


def test_a_locked_message_is_skipped_not_waited_for(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        channel._put("ingest", {"n": 0})
        channel._put("ingest", {"n": 1})
    engine = create_engine(broker_url.removeprefix("sqla+"))
    try:
        with engine.connect() as holder:  # another consumer in the middle of taking the oldest
            holder.execute(text("SELECT id FROM kombu_message ORDER BY id LIMIT 1 FOR UPDATE"))
            with Connection(broker_url) as conn:
                assert conn.default_channel._get("ingest") == {"n": 1}
            holder.rollback()
    finally:
        engine.dispose()


def test_a_worker_consumes_what_a_producer_published(broker_url: str) -> None:
    """Through kombu's public API: queue declared, message published, consumed and acknowledged."""
    from kombu import Exchange, Queue

    queue = Queue("normalize", Exchange("normalize"), routing_key="normalize")
    received: list[object] = []
    with Connection(broker_url) as conn:
        conn.Producer().publish({"window": 7}, exchange=queue.exchange, routing_key="normalize",
                                declare=[queue], serializer="json")
        with conn.Consumer(queue, callbacks=[lambda body, message: (received.append(body), message.ack())]):
            conn.drain_events(timeout=2)
    assert received == [{"window": 7}]
