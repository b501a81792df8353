"""One short task per stage. Each calls pipeline.stages; the retry decision is the class's policy."""

from __future__ import annotations

import random
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from pipeline.resilience.classify import backoff_seconds
from pipeline.runs import StageClaim, claim_stage, skip_stage
from pipeline.stages.contacts import contacts_window
from pipeline.stages.embed import embed_window
from pipeline.stages.fetch import fetch_window_for, ids_to_fetch
from pipeline.stages.ingest import ingest_window
from pipeline.stages.insight import insight_window
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import (
    StageNotReady,
    StagePrepare,
    StageRetry,
    StageWork,
    fail_window_stage,
    run_stage,
)
from tasks import context
from tasks.app import app

NOT_READY_COUNTDOWN = 2.0


def _run(task: Task, window_id: int, stage: str, work: StageWork,
         prepare: StagePrepare | None = None) -> dict[str, Any]:
    engine, settings = context.engine(), context.settings()
    try:
        result = run_stage(engine, settings, window_id, stage, work, prepare=prepare)
    except StageNotReady as exc:
        raise task.retry(countdown=NOT_READY_COUNTDOWN, max_retries=None, exc=exc) from exc
    except StageRetry as exc:
        wait = backoff_seconds(exc.error_class, task.request.retries, random.random())
        if wait is None:
            fail_window_stage(engine, window_id, stage, exc.error_class, str(exc.cause)[:1000])
            return {"window": window_id, "stage": stage, "outcome": "failed"}
        raise task.retry(countdown=wait, max_retries=None, exc=exc) from exc
    except SoftTimeLimitExceeded:
        fail_window_stage(engine, window_id, stage, "timeout", "soft time limit exceeded")
        return {"window": window_id, "stage": stage, "outcome": "failed"}
    return {"window": window_id, "stage": stage, "outcome": result.outcome}


@app.task(bind=True, name="mailpipe.ingest")
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


@app.task(bind=True, name="mailpipe.normalize")
def normalize(self: Task, window_id: int) -> dict[str, Any]:
    return _run(self, window_id, "normalize", normalize_window)


@app.task(bind=True, name="mailpipe.contacts")
def contacts(self: Task, window_id: int) -> dict[str, Any]:
    settings = context.settings()
    return _run(self, window_id, "contacts", lambda s, c: contacts_window(s, c, settings))


@app.task(bind=True, name="mailpipe.embed")
def embed(self: Task, window_id: int) -> dict[str, Any]:
    if context.settings().embedder == "none":
        claim = claim_stage(context.engine(), window_id, "embed")
        if claim is not None:
            skip_stage(context.engine(), claim, "embed")
        return {"window": window_id, "stage": "embed", "outcome": "skipped"}
    tools = context.embedding_tools()
    return _run(self, window_id, "embed", lambda s, c: embed_window(s, c, tools))


@app.task(bind=True, name="mailpipe.insight")
def insight(self: Task, window_id: int) -> dict[str, Any]:
    return _run(self, window_id, "insight", insight_window)
