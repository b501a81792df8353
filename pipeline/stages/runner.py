"""The common frame of every stage: claim, guard, do the work, mark, record failures."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pipeline.errors import MailpipeError
from pipeline.resilience.classify import classify, is_retried
from pipeline.runs import (
    StageClaim,
    claim_stage,
    complete_stage,
    fail_stage,
    maybe_finish_run,
    settle_claim,
    skip_stage,
)
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import DONE, FAILED, SKIPPED

log = logging.getLogger(__name__)

StageWork = Callable[[Session, StageClaim], dict[str, int]]
# Work done before the stage's transaction that commits its own progress (Gmail fetches, batch by
# batch), so a retry resumes where it stopped; runs under the same claim, cap and classification.
StagePrepare = Callable[[StageClaim], None]


class StageNotReady(MailpipeError):
    """The upstream stage has not finished yet (a task delivered out of order); try again later."""


class StageRetry(MailpipeError):
    """A retryable error: the caller (the Celery task) should retry after a backoff."""

    def __init__(self, error_class: str, cause: BaseException) -> None:
        super().__init__(f"{error_class}: {cause}")
        self.error_class = error_class
        self.cause = cause


@dataclass(frozen=True, slots=True)
class StageResult:
    window_id: int
    stage: str
    outcome: str  # done | already_done | blocked | failed | quarantined
    counters: dict[str, int]
    messages: int = 0  # messages of the window the stage went through (when done)


def run_stage(
    engine: Engine, settings: Settings, window_id: int, stage: str, work: StageWork, *, final_try: bool = False,
    prepare: StagePrepare | None = None, interrupts: tuple[type[BaseException], ...] = (),
) -> StageResult:
    """Claim the window's stage, run it, mark it. `interrupts`: exceptions that stop the work from outside
    (the task's soft time limit) and are re-raised as themselves, even when a library wrapped them (the
    openai client turns anything raised inside a request into APIConnectionError)."""
    claim = claim_stage(engine, window_id, stage)
    if claim is None:
        return StageResult(window_id, stage, "already_done", {})
    if claim.attempts > settings.max_deliveries:
        reason = f"delivered {claim.attempts} times without finishing (it may kill its worker); quarantined"
        fail_stage(engine, claim, stage, "poison", reason)
        return StageResult(window_id, stage, "quarantined", {})
    if claim.upstream_state in (FAILED, SKIPPED):
        skip_stage(engine, claim, stage)
        return StageResult(window_id, stage, "blocked", {})
    if claim.upstream_state is not None and claim.upstream_state != DONE:
        settle_claim(engine, window_id, stage)
        raise StageNotReady(f"window {window_id}: {stage} waits for its upstream ({claim.upstream_state})")
    try:
        if prepare is not None:
            prepare(claim)
        with transaction(engine) as session:
            counters = work(session, claim)
            complete_stage(session, window_id, stage, **counters)
    except Exception as exc:
        interrupt = _find(exc, interrupts)
        if interrupt is not None:
            raise interrupt from None
        error_class = classify(exc)
        if is_retried(error_class) and not final_try:
            settle_claim(engine, window_id, stage)
            raise StageRetry(error_class, exc) from exc
        log.warning("stage %s of window %s failed: %s", stage, window_id, exc, exc_info=True)
        fail_stage(engine, claim, stage, error_class, failure_reason(exc))
        return StageResult(window_id, stage, "failed", {})
    maybe_finish_run(engine, claim.run_id)
    return StageResult(window_id, stage, "done", counters, claim.size)


def fail_window_stage(engine: Engine, window_id: int, stage: str, error_class: str, reason: str) -> None:
    """Record a stage failure decided outside the work (e.g. the task's soft time limit)."""
    claim = claim_stage(engine, window_id, stage)
    if claim is not None:
        fail_stage(engine, claim, stage, error_class, reason)


def _find(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while kinds and current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def failure_reason(exc: BaseException) -> str:
    """The exception as its last traceback line, as a failure's recorded reason."""
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last[:1000]
