"""The enrichment sweep: embed and insight work that an AI outage left owed resumes by itself.

While the AI endpoint is out, the embed and insight stages give their window up with a retryable class
(transient, timeout, rate_limit, quota) instead of holding the run open: ingest, normalize and
contacts finish and the next sync can start. A periodic sweep (celery beat) finds those stages and,
once the endpoint's breaker lets calls through again, re-opens them (failed → pending, their failure
row removed: it no longer stands) and hands them to `dispatch`. A stage that fails again is recorded
again and waits for the next sweep. Permanent failures are never re-opened.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Engine, text

from pipeline.resilience.classify import QUOTA, RATE_LIMIT, TIMEOUT, TRANSIENT
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import DONE, PENDING, RUNNING, SKIPPED

log = logging.getLogger(__name__)

ENRICHMENT_STAGES = ("embed", "insight")
RESUMABLE_CLASSES = (TRANSIENT, TIMEOUT, RATE_LIMIT, QUOTA)
DEFAULT_BATCH = 50  # windows re-opened per sweep: an endpoint just back is not flooded at once

Dispatch = Callable[[str, int], None]  # (stage, window_id)


@dataclass(frozen=True, slots=True)
class Owed:
    window_id: int
    stage: str
    error_class: str


@dataclass(slots=True)
class SweepResult:
    reopened: list[Owed] = field(default_factory=list)
    waiting: int = 0  # owed stages left for a later sweep (the endpoint is still out, or over the batch)
    reason: str | None = None  # why nothing was re-opened, when nothing was

    def as_dict(self) -> dict[str, object]:
        return {"reopened": [(o.window_id, o.stage) for o in self.reopened], "waiting": self.waiting,
                "reason": self.reason}


def owed_enrichment(engine: Engine, limit: int | None = None, account_id: int | None = None) -> list[Owed]:
    """Embed and insight stages that failed with a class worth trying again, oldest window first
    (of one account's runs, when given)."""
    account = "AND w.run_id IN (SELECT id FROM sync_runs WHERE account_id = :acct) " if account_id else ""
    with transaction(engine) as s:
        rows = s.execute(
            text(
                "SELECT f.window_id, f.stage, f.error_class FROM failures f JOIN windows w ON w.id = f.window_id "
                "WHERE f.item_ref = 'window' AND f.stage = ANY(:stages) AND f.error_class = ANY(:classes) "
                "AND ((f.stage = 'embed' AND w.embed = 'failed') OR (f.stage = 'insight' AND w.insight = 'failed')) "
                f"{account}ORDER BY f.window_id, f.stage LIMIT :limit"
            ),
            {"stages": list(ENRICHMENT_STAGES), "classes": list(RESUMABLE_CLASSES), "limit": limit,
             "acct": account_id},
        ).all()
    return [Owed(int(w), str(st), str(c)) for w, st, c in rows]


def stage_states(engine: Engine, stages: list[Owed]) -> Counter[str]:
    """How many of these window stages are in each state now (pending, running, done, failed, skipped)."""
    states: Counter[str] = Counter()
    with transaction(engine) as s:
        for stage in ENRICHMENT_STAGES:
            ids = [o.window_id for o in stages if o.stage == stage]
            if ids:
                states.update(str(v) for v in s.execute(
                    text(f"SELECT {stage} FROM windows WHERE id = ANY(:ids)"), {"ids": ids}).scalars())
    return states


def reopen(engine: Engine, owed: Owed) -> bool:
    """failed → pending for one owed stage, its failure row removed; False if another sweep got it first."""
    if owed.stage not in ENRICHMENT_STAGES:
        raise ValueError(f"only enrichment stages are re-opened, not {owed.stage!r}")
    with transaction(engine) as s:
        changed = s.execute(
            text(
                f"UPDATE windows SET {owed.stage} = 'pending', finished = false, updated_at = now(), "
                f"attempts = attempts - '{owed.stage}' WHERE id = :id AND {owed.stage} = 'failed'"
            ),
            {"id": owed.window_id},
        ).rowcount  # type: ignore[attr-defined]
        if not changed:
            return False
        s.execute(
            text("DELETE FROM failures WHERE window_id = :id AND stage = :stage AND item_ref = 'window'"),
            {"id": owed.window_id, "stage": owed.stage},
        )
    return True


def sweep(engine: Engine, dispatch: Dispatch, *, endpoint_open: Callable[[], float],
          batch: int | None = DEFAULT_BATCH, account_id: int | None = None) -> SweepResult:
    """Re-open and dispatch up to `batch` owed stages (None: all), unless the endpoint's breaker is open.

    `endpoint_open()` returns the seconds until the AI endpoint's breaker lets a call through (0: now).
    """
    owed = owed_enrichment(engine, account_id=account_id)
    result = SweepResult(waiting=len(owed))
    if not owed:
        return result
    wait = endpoint_open()
    if wait > 0:
        result.reason = f"the AI endpoint's breaker is open for {wait:.0f} s more"
        return result
    for item in owed[:batch]:
        if reopen(engine, item):
            dispatch(item.stage, item.window_id)
            result.reopened.append(item)
    result.waiting = len(owed) - len(result.reopened)
    if result.reopened:
        log.info("enrichment sweep re-opened %d stage(s); %d still owed", len(result.reopened), result.waiting)
    return result


def endpoint_wait(settings: Settings, engine: Engine) -> float:
    """Seconds until the configured AI endpoint's breaker lets a call through; 0 when nothing calls one."""
    if settings.embedder != "openai" and settings.insights != "llm":
        return 0.0
    from pipeline.embeddings.remote import OPENAI_BASE_URL
    from pipeline.resilience.breakers import ai_breaker_name, breakers_for

    return breakers_for(settings, engine).get(ai_breaker_name(settings.ai_base_url or OPENAI_BASE_URL)).retry_after()


def await_stages(engine: Engine, stages: list[Owed], *, on_tick: Callable[[Counter[str]], None] | None = None,
                 alive: Callable[[], bool] | None = None, poll_seconds: float = 1.0) -> Counter[str]:
    """Wait until none of these window stages is pending or running; their final states.

    `alive()` false (the workers doing them are gone) ends the wait with what stands then."""
    while True:
        states = stage_states(engine, stages)
        if on_tick:
            on_tick(states)
        if not states[PENDING] + states[RUNNING] or (alive is not None and not alive()):
            return states
        time.sleep(poll_seconds)


@dataclass(slots=True)
class ResumeResult:
    resumed: int = 0  # stages re-opened and handed to the workers, counted once per round
    done: int = 0
    skipped: int = 0
    owed: int = 0  # still failed with a retryable class at the end
    rounds: int = 0
    reason: str | None = None  # why the last round was not tried or made no progress

    def as_dict(self) -> dict[str, object]:
        return {"resumed": self.resumed, "done": self.done, "skipped": self.skipped, "owed": self.owed,
                "rounds": self.rounds, "reason": self.reason}


def resume_owed(engine: Engine, dispatch: Dispatch, *, endpoint_open: Callable[[], float],
                account_id: int | None = None, max_breaker_wait: float = 60.0,
                on_tick: Callable[[int, Counter[str]], None] | None = None,
                alive: Callable[[], bool] | None = None, sleep: Callable[[float], None] = time.sleep) -> ResumeResult:
    """Resume all owed enrichment now and wait for it, round after round while rounds make progress.

    An endpoint just back is behind a half-open breaker that lets one probe through; the other stages
    of the round fail again at once and are owed again. The next round, once the breaker has closed,
    takes them. A round in which nothing got done ends it: the endpoint is still failing.
    `on_tick(total, states)` reports a round's stages as they finish.
    """
    result = ResumeResult()
    while True:
        wait = endpoint_open()
        if wait > max_breaker_wait:
            result.reason = f"the AI endpoint's breaker is open for {wait:.0f} s more"
            break
        if wait > 0:
            sleep(wait)
        swept = sweep(engine, dispatch, endpoint_open=lambda: 0.0, batch=None, account_id=account_id)
        if not swept.reopened:
            break
        result.rounds += 1
        result.resumed += len(swept.reopened)
        report = partial(on_tick, len(swept.reopened)) if on_tick else None
        states = await_stages(engine, swept.reopened, alive=alive, on_tick=report)
        result.done += states[DONE]
        result.skipped += states[SKIPPED]
        if states[PENDING] + states[RUNNING]:
            result.reason = "the workers stopped before the round finished"
            break
        if not states[DONE] + states[SKIPPED]:
            result.reason = "nothing of the last round got done: the AI endpoint is still failing"
            break
    result.owed = len(owed_enrichment(engine, account_id=account_id))
    return result
