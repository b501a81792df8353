"""One short task per stage. Each calls pipeline.stages; the retry decision is the class's policy."""

from __future__ import annotations

import random
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
    run_stage,
)
from pipeline.stages.workload import stage_units
from tasks import context
from tasks.app import app
from tasks.chains import dispatch_next, limit_options

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


def _run(task: Task, window_id: int, stage: str, work: StageWork,
         prepare: StagePrepare | None = None) -> dict[str, Any]:
    try:
        return _run_stage(task, window_id, stage, work, prepare)
    except (Retry, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        # A database or broker restart met outside run_stage's classification (the claim, the
        # workload query, the successors' publish). Repeating the task is safe: a stage already done
        # is skipped and its successors are sent again. Without this the window waits for the
        # driver's watchdog, minutes instead of seconds.
        wait = outage_backoff_seconds(task.request.retries, random.random())
        if classify(exc) != TRANSIENT or wait is None:
            raise
        try:
            limits = limit_options(stage, window_id)  # sized from the window: a database query
        except Exception:
            limits = {}  # the database is what is down: the configured limits serve this once
        raise task.retry(countdown=wait, exc=exc, **limits) from exc


def _run_stage(task: Task, window_id: int, stage: str, work: StageWork,
               prepare: StagePrepare | None) -> dict[str, Any]:
    engine, settings = context.engine(), context.settings()
    owed = stage_units(engine, settings, window_id, stage) if stage in RESUMABLE_STAGES else 0.0
    messages = 0
    try:
        result = run_stage(engine, settings, window_id, stage, work, prepare=prepare,
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
        fail_window_stage(engine, window_id, stage, "timeout", "soft time limit exceeded without progress")
        outcome = "failed"
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
            context.forget_gmail_client()  # a re-connected grant or a reset connection is read afresh
            raise

    return _run(self, window_id, "ingest", ingest_window, prepare=fetch)


@app.task(bind=True, name="mailpipe.normalize", max_retries=None)
def normalize(self: Task, window_id: int) -> dict[str, Any]:
    return _run(self, window_id, "normalize", normalize_window)


@app.task(bind=True, name="mailpipe.contacts", max_retries=None)
def contacts(self: Task, window_id: int) -> dict[str, Any]:
    settings = context.settings()
    return _run(self, window_id, "contacts", lambda s, c: contacts_window(s, c, settings))


@app.task(bind=True, name="mailpipe.embed", max_retries=None)
def embed(self: Task, window_id: int) -> dict[str, Any]:
    if context.settings().embedder == "none":
        claim = claim_stage(context.engine(), window_id, "embed")
        if claim is not None:
            skip_stage(context.engine(), claim, "embed")
        return {"window": window_id, "stage": "embed", "outcome": "skipped"}  # nothing follows embed
    tools = context.embedding_tools()

    def embed_slices(claim: StageClaim) -> None:
        # Committed slice by slice before the stage's own (empty) transaction marks it done.
        embed_pending(context.engine(), claim, tools)

    return _run(self, window_id, "embed", lambda s, c: {}, prepare=embed_slices)


@app.task(bind=True, name="mailpipe.insight", max_retries=None)
def insight(self: Task, window_id: int) -> dict[str, Any]:
    tools = context.insight_tools()
    if tools.llm is None:
        return _run(self, window_id, "insight", insight_window)

    def ask_llm(claim: StageClaim) -> None:
        # Thread by thread, each committed, before the stage's own transaction marks the messages.
        insight_pending(context.engine(), claim, tools)

    return _run(self, window_id, "insight", mark_insights, prepare=ask_llm)
