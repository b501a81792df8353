"""The chain per window: ingest -> normalize -> contacts -> (embed, insight), one link at a time.

Each stage task publishes its successors when it ends (whatever its outcome: a blocked successor
must still run to be marked skipped), so every task is published knowing the work it holds and
gets soft and hard time limits sized to it (pipeline.stages.workload). A worker killed between its
stage's commit and that publish loses nothing: the message is redelivered (acks_late), the stage
finds itself already done and publishes its successors then.
"""

from __future__ import annotations

from pipeline.stages.workload import window_limits
from tasks import context
from tasks.app import app

NEXT: dict[str, tuple[str, ...]] = {
    "ingest": ("normalize",),
    "normalize": ("contacts",),
    "contacts": ("embed", "insight"),
}


def limit_options(stage: str, window_id: int) -> dict[str, float]:
    """`apply_async` options with the stage's time limits for this window (none: the defaults apply)."""
    limits = window_limits(context.engine(), context.settings(), window_id, stage)
    return {} if limits is None else {"soft_time_limit": limits.soft, "time_limit": limits.hard}


def dispatch_stage(stage: str, window_id: int) -> None:
    app.signature(f"mailpipe.{stage}", (window_id,)).apply_async(**limit_options(stage, window_id))


def dispatch_next(stage: str, window_id: int) -> None:
    for successor in NEXT.get(stage, ()):
        dispatch_stage(successor, window_id)


def dispatch_window(window_id: int) -> None:
    dispatch_stage("ingest", window_id)
