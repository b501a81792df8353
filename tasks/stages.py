"""One short task per stage. Each calls pipeline.stages; the retry decision is the class's policy."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from pipeline.resilience.breakers import BreakerOpenError
from pipeline.resilience.classify import QUOTA, TRANSIENT, backoff_seconds, classify, outage_backoff_seconds
from pipeline.resilience.quota import retry_after_hint
from pipeline.runs import StageClaim, claim_stage, skip_stage
from pipeline.stages.contacts import contacts_window
from pipeline.stages.embed import embed_pending
from pipeline.stages.fetch import fetch_window_for, ids_to_fetch
from pipeline.stages.ingest import ingest_window
from pipeline.stages.insight import insight_pending, insight_window, mark_insights
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import (
    StageNotReady,
    StagePrepare,
    StageRetry,
    StageWork,
    fail_window_stage,
    failure_reason,
    run_stage,
)
from pipeline.stages.workload import stage_units
from tasks import context
from tasks.app import app
from tasks.chains import dispatch_next, limit_options

log = logging.getLogger(__name__)

NOT_READY_COUNTDOWN = 2.0
# Stage tasks are declared with max_retries=None: how often a class is retried is its policy's call
# (pipeline.resilience.classify). Celery's own default of 3 would fail the 4th retry of any kind, and
# `retry(max_retries=None)` does not lift it: there None means "the task's default".
# Stages that call the AI endpoint. While it is out (breaker open, quota exhausted) they give the window
# up at once instead of waiting: the run finishes, the next sync can start, and the enrichment sweep
# resumes them when the endpoint is back (pipeline.enrichment).
AI_STAGES = frozenset({"embed", "insight"})
# Stages whose work commits as it goes (fetch batches, embed slices, LLM insights thread by thread): on
# the soft time limit what is done stays done and the rest is re-queued with limits sized to it. Others
# fail the window's stage.
RESUMABLE_STAGES = frozenset({"ingest", "embed", "insight"})


@dataclass(frozen=True, slots=True)
class StageParts:
    """What a stage task runs: the work in the stage's transaction and what comes before it."""

    work: StageWork
    prepare: StagePrepare | None = None


# Builds a task's parts (its clients: the first task in a process pays for them). None: the stage is
# switched off by the settings and is marked skipped.
PartsFactory = Callable[[], StageParts | None]


def _run(task: Task, window_id: int, stage: str, parts: PartsFactory) -> dict[str, Any]:
    try:
        return _run_stage(task, window_id, stage, parts)
    except Retry:
        raise
    except SoftTimeLimitExceeded:
        # The limit struck outside the stage's work: while its clients were built, what it owes was
        # sized, or its successors were published. Uncaught, the task would end acknowledged with the
        # stage neither done nor failed, and the window would wait for the driver's stall check.
        return _after_stray_limit(task, window_id, stage)
    except Exception as exc:
        # A database or broker restart met outside run_stage's classification (the claim, the
        # workload query, the successors' publish). Repeating the task is safe: a stage already done
        # is skipped and its successors are sent again. Without this the window waits for the
        # driver's watchdog, minutes instead of seconds.
        error_class = classify(exc)
        if error_class == TRANSIENT:
            wait = outage_backoff_seconds(task.request.retries, random.random())
            if wait is None:
                raise  # an outage that outlasted the retries: the driver's stall check sends the window again
            try:
                limits = limit_options(stage, window_id)  # sized from the window: a database query
            except Exception:
                limits = {}  # the database is what is down: the configured limits serve this once
            raise task.retry(countdown=wait, exc=exc, **limits) from exc
        # Anything else (e.g. building the stage's clients failed) fails the stage with its reason, as a
        # failure in the work does; re-raised, the task would end acknowledged with the stage left open
        # until the driver's stall check, which would only send it into the same error again.
        log.warning("stage %s of window %s failed outside its work: %s", stage, window_id, exc, exc_info=True)
        return _fail(window_id, stage, error_class, failure_reason(exc))


def _fail(window_id: int, stage: str, error_class: str, reason: str) -> dict[str, Any]:
    """Record the stage failed for a reason decided outside run_stage's classification."""
    fail_window_stage(context.engine(), window_id, stage, error_class, reason)
    dispatch_next(stage, window_id)  # a failed stage's successors still run, to be marked skipped
    return {"window": window_id, "stage": stage, "outcome": "failed", "messages": 0}


def _after_stray_limit(task: Task, window_id: int, stage: str) -> dict[str, Any]:
    """Run the task again at once: what the database holds says where the stage stands (already done:
    its successors are published). A stage whose task never gets past its setup within the limit is
    failed once its deliveries reach the redelivery cap, as run_stage quarantines one that kills its worker."""
    if task.request.retries < context.settings().max_deliveries:
        raise task.retry(countdown=0, **limit_options(stage, window_id))
    return _fail(window_id, stage, "timeout", "soft time limit exceeded outside the stage's work, "
                              f"{task.request.retries + 1} times")


def _run_stage(task: Task, window_id: int, stage: str, make_parts: PartsFactory) -> dict[str, Any]:
    engine, settings = context.engine(), context.settings()
    parts = make_parts()
    if parts is None:
        claim = claim_stage(engine, window_id, stage)
        if claim is not None:
            skip_stage(engine, claim, stage)
        dispatch_next(stage, window_id)
        return {"window": window_id, "stage": stage, "outcome": "skipped", "messages": 0}
    owed = stage_units(engine, settings, window_id, stage) if stage in RESUMABLE_STAGES else 0.0
    messages = 0
    try:
        result = run_stage(engine, settings, window_id, stage, parts.work, prepare=parts.prepare,
                           interrupts=(SoftTimeLimitExceeded,))
        outcome, messages = result.outcome, result.messages
    except StageNotReady as exc:
        raise task.retry(countdown=NOT_READY_COUNTDOWN, exc=exc) from exc
    except StageRetry as exc:
        outcome = _retry(task, window_id, stage, exc)
    except SoftTimeLimitExceeded:
        if stage in RESUMABLE_STAGES and stage_units(engine, settings, window_id, stage) < owed:
            # The redelivery cap (claims count every delivery) bounds how often this can happen.
            raise task.retry(countdown=0, **limit_options(stage, window_id)) from None
        return _fail(window_id, stage, "timeout", "soft time limit exceeded without progress")
    dispatch_next(stage, window_id)
    # `messages` feeds the per-stage throughput metric (tasks.metrics records it after the task).
    return {"window": window_id, "stage": stage, "outcome": outcome, "messages": messages}


def _retry(task: Task, window_id: int, stage: str, exc: StageRetry) -> str:
    """Retry after the class's backoff (raises celery's Retry), or record why not and return the outcome."""
    engine = context.engine()
    if stage in AI_STAGES and (isinstance(exc.cause, BreakerOpenError) or exc.error_class == QUOTA):
        fail_window_stage(engine, window_id, stage, exc.error_class,
                          f"AI endpoint unavailable, left to the enrichment sweep: {exc.cause}"[:1000])
        return "deferred"
    if isinstance(exc.cause, BreakerOpenError):
        # The dependency is down for everyone: come back when its breaker lets a probe through.
        # Not counted against the class's retries; the redelivery cap still bounds the loop.
        raise task.retry(countdown=exc.cause.retry_after, exc=exc,
                         **limit_options(stage, window_id)) from exc
    wait = backoff_seconds(exc.error_class, task.request.retries, random.random())
    if wait is None:
        fail_window_stage(engine, window_id, stage, exc.error_class, str(exc.cause)[:1000])
        return "failed"
    # A server that said how long to wait (an AI endpoint's 429) is not asked again sooner.
    wait = max(wait, retry_after_hint(exc.cause, datetime.now(UTC)) or 0.0)
    raise task.retry(countdown=wait, exc=exc, **limit_options(stage, window_id)) from exc


@app.task(bind=True, name="mailpipe.ingest", max_retries=None)
def ingest(self: Task, window_id: int) -> dict[str, Any]:
    def fetch(claim: StageClaim) -> None:
        # Gmail windows hold ids only: fetch the bytes first (a mailbox file's window has them).
        if not ids_to_fetch(context.engine(), window_id):
            return
        try:
            fetch_window_for(context.engine(), claim, context.gmail_client(claim.account_id))
        except Exception:
            context.forget_gmail_client(claim.account_id)  # a re-connected grant or reset connection: afresh
            raise

    return _run(self, window_id, "ingest", lambda: StageParts(ingest_window, prepare=fetch))


@app.task(bind=True, name="mailpipe.normalize", max_retries=None)
def normalize(self: Task, window_id: int) -> dict[str, Any]:
    return _run(self, window_id, "normalize", lambda: StageParts(normalize_window))


@app.task(bind=True, name="mailpipe.contacts", max_retries=None)
def contacts(self: Task, window_id: int) -> dict[str, Any]:
    settings = context.settings()
    return _run(self, window_id, "contacts", lambda: StageParts(lambda s, c: contacts_window(s, c, settings)))


def _embed_parts() -> StageParts | None:
    if context.settings().embedder == "none":
        return None
    tools = context.embedding_tools()

    def embed_slices(claim: StageClaim) -> None:
        # Committed slice by slice before the stage's own (empty) transaction marks it done.
        embed_pending(context.engine(), claim, tools)

    return StageParts(lambda s, c: {}, prepare=embed_slices)


@app.task(bind=True, name="mailpipe.embed", max_retries=None)
def embed(self: Task, window_id: int) -> dict[str, Any]:
    return _run(self, window_id, "embed", _embed_parts)


def _insight_parts() -> StageParts:
    tools = context.insight_tools()
    if tools.llm is None:
        return StageParts(insight_window)

    def ask_llm(claim: StageClaim) -> None:
        # Thread by thread, each committed, before the stage's own transaction marks the messages.
        insight_pending(context.engine(), claim, tools)

    return StageParts(mark_insights, prepare=ask_llm)


@app.task(bind=True, name="mailpipe.insight", max_retries=None)
def insight(self: Task, window_id: int) -> dict[str, Any]:
    return _run(self, window_id, "insight", _insight_parts)
