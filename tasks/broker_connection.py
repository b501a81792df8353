"""The broker connection every worker, producer and consumer of the app opens: kombu's, with one fix.

Celery 5.7, when its consumer loses the broker, first collects the broken connection and then closes
it (`Consumer.on_connection_error_after_connected`). With Redis down, collecting closes the connection's
default channel, whose close fails part-way (its pending BRPOP cannot be read) before it marks itself
closed, and kombu swallows that; then the transport is released (`transport.client = None`). The close
that follows closes that channel again, which now gets as far as putting back the messages the worker
holds unacknowledged (our tasks are `acks_late`, so every task in flight) and needs a Redis client for
it, built from the released transport: `AttributeError: 'NoneType' object has no attribute 'hostname'`.
That is not a connection error, nothing catches it, and the worker's main process exits
("Unrecoverable error"). It takes a worker below its prefetch limit (a BRPOP in flight) holding a task
when Redis goes; bench.chaos saw one or both workers end this way at its Redis restart (kombu 5.7.0,
redis 8.2; tests/test_broker_restart.py reproduces it).

Here a connection whose transport has been released forgets its default channel: it cannot be closed
any more. Its unacknowledged messages stay in Redis's `unacked` hash, where kombu put them on delivery,
and are delivered again once the visibility timeout has passed, as after any worker's crash; the
worker itself reconnects and goes on.
"""

from __future__ import annotations

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection


class BrokerConnection(Connection):  # type: ignore[misc]
    def _do_close_transport(self) -> None:
        # After this the channel's transport has no client: a later close of the channel would
        # rebuild one from it and fail (module docstring). A channel closed cleanly lost nothing here.
        self._default_channel = None
        super()._do_close_transport()


class AMQP(CeleryAMQP):  # type: ignore[misc]
    """Celery's AMQP helpers with BrokerConnection for every connection the app opens."""

    Connection = BrokerConnection


__all__ = ["AMQP", "BrokerConnection"]
