"""The embedded default's broker: kombu's SQLAlchemy transport on mailpipe's PostgreSQL, made cheaper to poll.

`install()` (tasks.app calls it) changes three things of the transport, for every process, and
`forget_connections()` drops a forked pool child's inherited connections:

- **Polling interval.** kombu sleeps this long whenever a poll finds nothing it may take, including
  while every pool child is busy: with its default of 1 s a worker took at most one new task per child
  per second, whatever the tasks' length. Transport options cannot set it (kombu hands them all to
  create_engine), the class attribute can. A 2k-message import without embeddings took 25.6 s at 1 s
  and 10-20 s at 0.1 (the machine shared); an idle worker at 0.05 s cost ~8% of a core (its polls and
  Postgres answering them), 0.1 s about half that.
- **A drain polls once.** The worker's loop for transports without asynchronous I/O waits in
  drain_events(timeout=2.0) and only then sees that a SIGTERM asked it to stop: 2 s of every CLI
  command's shutdown. Here a call polls the queues once and, finding nothing, sleeps one poll interval
  before it returns, so the loop sees a stop request within about that. (kombu's own loop with a short
  timeout polled again at once on each new call: with 0.1 s, twice per interval, and an idle worker
  cost a fifth more CPU.)
- **One statement to take a message, one to put one.** kombu looks its queue's row up by name on
  every get and every put, then takes a message through the ORM: a SELECT of the queue, a SELECT ...
  FOR UPDATE, an UPDATE when it found one, and a COMMIT, for each queue at each poll. Queue rows are
  never deleted (kombu has no delete for them), so their ids are kept per channel once read, and a
  get is one UPDATE ... RETURNING of the oldest visible message (skipping one another consumer has
  locked, which its UPDATE then hides) and a COMMIT. What it writes is what kombu's ORM wrote: the
  message hidden (`visible` false), its version bumped, its timestamp set to the local time. The SQL
  is PostgreSQL's (SKIP LOCKED): mailpipe's SQL broker is always its own database (tasks.config).
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import lru_cache
from queue import Empty
from typing import Any

from celery.worker import state as worker_state
from kombu.transport import sqlalchemy as sqla_transport
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from sqlalchemy import Table, TextClause, insert, text

POLL_SECONDS = 0.1

_drain_events = sqla_transport.Transport.drain_events


def install() -> None:
    """Apply this module's changes to kombu's SQLAlchemy transport (idempotent)."""
    sqla_transport.Transport.polling_interval = POLL_SECONDS
    sqla_transport.Transport.drain_events = _drain_events_briefly  # type: ignore[method-assign,assignment]
    sqla_transport.Channel._get = _get  # type: ignore[method-assign]
    sqla_transport.Channel._put = _put  # type: ignore[method-assign]


def forget_connections() -> None:
    """Drop the embedded broker's pooled connections in a newly forked child.

    kombu's SQLAlchemy transport caches its engines on the Channel class, so a child forked after
    the parent has connected (one replacing a retired child) would publish on the parent's own
    Postgres session: "prepared statement already exists", and the publish is lost.
    """
    for engine, _session_factory in list(sqla_transport.Channel._engines.values()):
        engine.dispose(close=False)


def _drain_events_briefly(self: sqla_transport.Transport, connection: object, timeout: float | None = None) -> object:
    if timeout is None:  # a caller that blocks until a message comes: kombu's loop as it is
        return _drain_events(self, connection, timeout=None)
    if _asked_to_stop():
        # Celery's loop drains once more after its shutdown check has raised (in a `finally`): a
        # warm shutdown waited that long for nothing, and a message taken then only went back.
        raise TimeoutError()  # what kombu raises when a drain finds nothing (socket.timeout)
    try:
        return _drain_events(self, connection, timeout=0)  # one round of the queues, no sleep
    except TimeoutError:
        time.sleep(min(timeout, self.polling_interval))
        raise


def _asked_to_stop() -> bool:
    """The flags celery.worker.state.maybe_shutdown raises on (by identity: a warm stop's code is 0)."""
    return any(flag is not None and flag is not False
               for flag in (worker_state.should_stop, worker_state.should_terminate))


def _queue_id(channel: sqla_transport.Channel, queue: str) -> int:
    """The id of `queue`'s row, created if missing (kombu's own lookup), read once per channel."""
    ids: dict[str, int] = channel.__dict__.setdefault("_mailpipe_queue_ids", {})
    queue_id = ids.get(queue)
    if queue_id is None:
        queue_id = ids[queue] = int(channel._get_or_create(queue).id)
    return queue_id


def _get(self: sqla_transport.Channel, queue: str) -> Any:
    queue_id = _queue_id(self, queue)
    try:
        payload = self.session.execute(_take(_table(self.message_cls)),
                                       {"queue": queue_id, "now": datetime.now()}).scalar()
        self.session.commit()  # as kombu's: also ends the transaction of a poll that found nothing
    except BaseException:
        self.session.rollback()
        raise
    if payload is None:
        raise Empty()
    return loads(bytes_to_str(payload))


def _put(self: sqla_transport.Channel, queue: str, payload: Any, **_: Any) -> None:
    statement = insert(self.message_cls.__table__).values(
        queue_id=_queue_id(self, queue), payload=dumps(payload), visible=True, version=1)
    try:
        self.session.execute(statement)
        self.session.commit()
    except BaseException:
        # As kombu's: re-raised so the publish fails (and can be retried) instead of reporting success
        # for a message that was never stored; rolled back, as in _get, so the session can be used again.
        self.session.rollback()
        raise


@lru_cache(maxsize=8)
def _take(table: str) -> TextClause:
    """Hide the queue's oldest visible message and return its payload, in kombu's order (timestamp, id)."""
    return text(
        f'UPDATE {table} SET visible = false, version = version + 1, "timestamp" = :now '
        f'WHERE id = (SELECT id FROM {table} WHERE queue_id = :queue AND visible '
        'ORDER BY "timestamp", id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING payload'
    )


def _table(model: Any) -> str:
    table: Table = model.__table__
    return table.name  # kombu's names (kombu_message by default) need no quoting


__all__ = ["POLL_SECONDS", "forget_connections", "install"]
