"""Insight: per touched thread, the rules insight, or with an LLM configured a validated LLM insight.

Rules only (`insight_window`): one transaction for the window, as every other stage.

LLM (`insight_pending`, then `mark_insights`): thread by thread, each committed when it is done with its
messages of the window marked, so a retry, a deferral to the enrichment sweep or a soft time limit loses
no answer already paid for and the next task asks only for the rest; a call is never made while a
transaction is open. Header rules come first (bulk threads never reach the
LLM); a thread whose summary already covers all its messages costs nothing; otherwise only the messages
after what the summary covers are sent with it (`pipeline.insights.plan`). An answer that stays invalid
after one retry leaves a failure row for the thread, which keeps its rules insight (or its earlier LLM
one). Budget exhaustion, quota, rate limits and outages propagate to the stage's retry policy; before
they do, threads still without any insight get the rules'.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.insights.budget import Ledger, Prices
from pipeline.insights.llm import Answered, InsightLLM, InvalidInsightAnswer, insight_llm_for
from pipeline.insights.plan import Coverage, PlanOptions, ThreadMessage, ThreadPlan, plan_thread
from pipeline.insights.redact import redaction_enabled
from pipeline.insights.rules import ACTION_ITEM_MAX_CHARS, MAX_ACTION_ITEMS, thread_insight
from pipeline.records import InsightResult, ThreadMessageView
from pipeline.resilience.classify import PERMANENT
from pipeline.runs import StageClaim, record_failure
from pipeline.settings import Settings
from pipeline.stages.normalize import mark_messages, window_message_rows
from pipeline.storage.db import transaction
from pipeline.storage.models import Insight, Message, Thread, WindowItem

log = logging.getLogger(__name__)

LLM_SUMMARY_MAX_CHARS = 1200
WHO_MAX_CHARS = 120
REPLANS = 3  # another window wrote the thread's insight while our call ran: plan and ask again, this often


@dataclass(frozen=True, slots=True)
class InsightTools:
    """What the insight stage needs besides the database: the settings and, in LLM mode, the model."""

    settings: Settings
    llm: InsightLLM | None  # None: rules only
    redact_secrets: bool

    @property
    def options(self) -> PlanOptions:
        return PlanOptions(text_cap=self.settings.insight_message_chars,
                           max_messages=self.settings.insight_thread_messages, redact_secrets=self.redact_secrets)


def insight_tools_for(settings: Settings, engine: Engine) -> InsightTools:
    return InsightTools(settings, insight_llm_for(settings, engine), redaction_enabled(settings))


# ------------------------------------------------------------------ rules only


def insight_window(session: Session, claim: StageClaim) -> dict[str, int]:
    pending = window_message_rows(session, claim.window_id, Message.insight_at, Message.thread_id)
    thread_ids = sorted({int(r.thread_id) for r in pending if r.thread_id is not None})
    if thread_ids:
        _lock_threads(session, thread_ids)
    # Read every touched thread's messages at once and write their insights in one statement: thread
    # by thread, the two round trips per thread were most of the stage's time.
    results = [(thread_id, thread_insight([m.view for m in messages]))
               for thread_id, messages in _threads_messages(session, thread_ids).items() if messages]
    _upsert_rules(session, claim.account_id, results)
    mark_messages(session, [int(r.id) for r in pending], Message.insight_at)
    return {}


def mark_insights(session: Session, claim: StageClaim) -> dict[str, int]:
    """The window's messages have their insights: the stage's last step, committed with its mark."""
    ids = [int(r.id) for r in window_message_rows(session, claim.window_id, Message.insight_at)]
    mark_messages(session, ids, Message.insight_at)
    return {}


# ------------------------------------------------------------------ LLM


def insight_pending(engine: Engine, claim: StageClaim, tools: InsightTools) -> dict[str, int]:
    """LLM insights for the window's touched threads, each committed as it is done; counts by outcome."""
    if tools.llm is None:
        raise ValueError("insight_pending needs an LLM; rules-only insights are insight_window's")
    with transaction(engine) as s:
        thread_ids = _touched_threads(s, claim.window_id)
    ledger = Ledger(engine, claim.account_id, Prices.from_settings(tools.settings),
                    tools.settings.ai_daily_budget_usd, hold_seconds=tools.settings.ai_reservation_hold_seconds)
    outcomes: Counter[str] = Counter()
    for index, thread_id in enumerate(thread_ids):
        try:
            outcomes[_refresh_llm(engine, claim, thread_id, tools, tools.llm, ledger)] += 1
        except Exception:
            _rules_where_missing(engine, claim.account_id, thread_ids[index:])
            raise
    log.info("insights of window %s: %s", claim.window_id, dict(outcomes))
    return dict(outcomes)


def _refresh_llm(engine: Engine, claim: StageClaim, thread_id: int, tools: InsightTools, llm: InsightLLM,
                 ledger: Ledger) -> str:
    """One thread: plan, ask (outside any transaction), then write under the thread's lock."""
    for _ in range(REPLANS):
        with transaction(engine) as s:
            subject, messages, coverage = _thread_state(s, thread_id)
        if not messages:
            return "empty"
        plan = plan_thread(subject, messages, coverage, tools.options)
        answered: Answered | None = None
        problem: InvalidInsightAnswer | None = None
        if plan.action == "llm":
            assert plan.prompt is not None
            try:
                answered = llm.ask(plan.prompt.messages, ledger)
            except InvalidInsightAnswer as exc:
                problem = exc
        with transaction(engine) as s:
            _lock_threads(s, [thread_id])
            subject, messages, current = _thread_state(s, thread_id)
            fresh = plan_thread(subject, messages, current, tools.options) if messages else None
            outcome: str | None = None
            if fresh is None or fresh.action == "covered":
                outcome = "covered"
            elif fresh.action == "rules":
                _upsert(s, claim.account_id, thread_id, fresh.rules)
                outcome = "rules"
            elif current != coverage:
                continue  # another window wrote a newer insight while we asked: ours may cover less
            elif answered is not None:
                _upsert(s, claim.account_id, thread_id, _llm_result(answered, llm.source), plan=plan)
                outcome = "llm_incremental" if plan.incremental else "llm"
            elif problem is not None:
                record_failure(s, claim.account_id, claim.run_id, claim.window_id, f"thread:{thread_id}",
                               "insight", PERMANENT, f"LLM insight: {problem}")
                if current is None or not current.source.startswith("llm:"):
                    _upsert(s, claim.account_id, thread_id, fresh.rules)
                outcome = "invalid"
            if outcome is not None:
                _mark_thread_done(s, claim.window_id, thread_id)
                return outcome
    return "contended"


def _mark_thread_done(session: Session, window_id: int, thread_id: int) -> None:
    """Mark the window's messages of a thread whose insight is written, with it. At a few seconds per
    thread, a window's LLM calls can outlast the task's soft time limit: what is marked stays done, the
    stage's units drop, and the task re-queued for the rest (tasks.stages) asks only for the others."""
    session.execute(
        update(Message)
        .where(Message.thread_id == thread_id, Message.insight_at.is_(None),
               Message.id.in_(select(WindowItem.message_id).where(WindowItem.window_id == window_id)))
        .values(insight_at=func.now())
        .execution_options(synchronize_session=False)
    )


def _rules_where_missing(engine: Engine, account_id: int, thread_ids: list[int]) -> None:
    """Threads still without any insight get the rules' while the LLM's waits (a retry, the sweep)."""
    try:
        with transaction(engine) as s:
            have = set(s.execute(select(Insight.thread_id).where(Insight.thread_id.in_(thread_ids))).scalars())
            missing = [t for t in thread_ids if t not in have]
            if missing:
                _lock_threads(s, missing)
            for thread_id in missing:
                messages = _thread_messages(s, thread_id)
                if messages:
                    _upsert(s, account_id, thread_id, thread_insight([m.view for m in messages]))
    except Exception:  # the error being raised matters more than this courtesy
        log.warning("could not write rules insights for %d thread(s)", len(thread_ids), exc_info=True)


def _llm_result(answered: Answered, source: str) -> InsightResult:
    a = answered.answer
    items = [{"what": _shorten(i.what, ACTION_ITEM_MAX_CHARS), "who": _shorten(i.who, WHO_MAX_CHARS),
              "due": _shorten(i.due or "", WHO_MAX_CHARS)} for i in a.action_items[:MAX_ACTION_ITEMS]]
    return InsightResult(category=a.category, needs_reply=a.needs_reply,
                         summary=_shorten(a.summary, LLM_SUMMARY_MAX_CHARS), action_items=items, source=source)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ------------------------------------------------------------------ storage


def _touched_threads(session: Session, window_id: int) -> list[int]:
    rows = window_message_rows(session, window_id, Message.insight_at, Message.thread_id)
    return sorted({int(r.thread_id) for r in rows if r.thread_id is not None})


def _lock_threads(session: Session, thread_ids: list[int]) -> None:
    # In id order, so two windows sharing threads write their insights one after the other, the later
    # one reading every message the earlier one saw.
    session.execute(select(Thread.id).where(Thread.id.in_(thread_ids)).order_by(Thread.id).with_for_update())


_THREAD_MESSAGE_COLUMNS = (Message.id, Message.from_email, Message.from_me, Message.sent_at, Message.subject,
                           Message.stripped_text, Message.category, Message.from_name)


def _thread_messages(session: Session, thread_id: int) -> list[ThreadMessage]:
    rows = session.execute(
        select(*_THREAD_MESSAGE_COLUMNS)
        .where(Message.thread_id == thread_id, Message.normalized_at.is_not(None))
        .order_by(Message.sent_at.asc().nulls_first(), Message.id)
    ).all()
    return [_thread_message(r) for r in rows]


def _threads_messages(session: Session, thread_ids: list[int]) -> dict[int, list[ThreadMessage]]:
    """`_thread_messages` of several threads in one query, by thread id (in the order given)."""
    out: dict[int, list[ThreadMessage]] = {t: [] for t in thread_ids}
    if not thread_ids:
        return out
    rows = session.execute(
        select(Message.thread_id, *_THREAD_MESSAGE_COLUMNS)
        .where(Message.thread_id.in_(thread_ids), Message.normalized_at.is_not(None))
        .order_by(Message.thread_id, Message.sent_at.asc().nulls_first(), Message.id)
    ).all()
    for r in rows:
        out[int(cast(int, r[0]))].append(_thread_message(r[1:]))
    return out


def _thread_message(r: Any) -> ThreadMessage:
    return ThreadMessage(int(r[0]), ThreadMessageView(from_email=r[1], from_me=bool(r[2]), date=r[3],
                                                      subject=r[4] or "", stripped=r[5] or "",
                                                      category=r[6] or "personal"), r[7])


def _thread_state(session: Session, thread_id: int) -> tuple[str, list[ThreadMessage], Coverage | None]:
    subject = session.execute(select(Thread.subject).where(Thread.id == thread_id)).scalar() or ""
    row = session.execute(
        select(Insight.source, Insight.summary, Insight.summarized_messages, Insight.summarized_through)
        .where(Insight.thread_id == thread_id)
    ).first()
    coverage = Coverage(str(row[0]), str(row[1]), int(row[2]), row[3]) if row else None
    return subject, _thread_messages(session, thread_id), coverage


def _upsert(session: Session, account_id: int, thread_id: int, result: InsightResult,
            plan: ThreadPlan | None = None) -> None:
    values: dict[str, Any] = {
        "category": result.category, "needs_reply": result.needs_reply, "summary": result.summary,
        "action_items": result.action_items, "source": result.source, "updated_at": func.now(),
        # Only an LLM summary covers messages; a rules insight makes the next LLM call start afresh.
        "summarized_messages": plan.covers if plan else 0, "summarized_through": plan.through if plan else None,
    }
    session.execute(
        pg_insert(Insight)
        .values(thread_id=thread_id, account_id=account_id, **values)
        .on_conflict_do_update(index_elements=[Insight.thread_id], set_=values)
    )


_INSIGHTS = cast(Table, Insight.__table__)
_RULES_INSERT = pg_insert(_INSIGHTS).values(updated_at=func.now())
_UPSERT_RULES = _RULES_INSERT.on_conflict_do_update(
    index_elements=[_INSIGHTS.c.thread_id],
    set_={c: _RULES_INSERT.excluded[c] for c in ("category", "needs_reply", "summary", "action_items", "source",
                                                  "summarized_messages", "summarized_through")}
    | {"updated_at": func.now()},
)


def _upsert_rules(session: Session, account_id: int, results: list[tuple[int, InsightResult]]) -> None:
    """`_upsert` of rules insights for several threads: one statement built once, executed with a parameter
    set per thread (built per window with .values([...]), it was compiled anew for each row count)."""
    if not results:
        return
    session.execute(_UPSERT_RULES, [
        {"thread_id": thread_id, "account_id": account_id, "category": r.category, "needs_reply": r.needs_reply,
         "summary": r.summary, "action_items": r.action_items, "source": r.source, "summarized_messages": 0,
         "summarized_through": None}
        for thread_id, r in results
    ])
