"""What enriching the pending mail with LLM insights would cost, calling nothing (`mailpipe enrich --estimate`).

Pending: messages whose insight stage has not run. Their threads are planned exactly as the stage plans
them (`plan_thread`: header rules, coverage, the incremental request, the caps and the redaction), and
each request's prompt is counted with the same 4-characters-a-token estimate the budget reserves with.
Completion tokens cannot be known before the answer: a typical answer's size is assumed, and the worst
case (every answer using its whole allowance) is given too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from pipeline.insights.budget import Prices, estimate_prompt_tokens
from pipeline.insights.plan import Coverage, PlanOptions, ThreadMessage, plan_thread
from pipeline.insights.redact import redaction_enabled
from pipeline.records import ThreadMessageView
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import Insight, Message, Thread

TYPICAL_COMPLETION_TOKENS = 200  # a three-sentence summary, a couple of action items, two enums, as JSON
THREADS_PER_BATCH = 500


@dataclass(slots=True)
class Estimate:
    mode: str  # the configured insights mode: "rules" means no call would be made at all
    model: str
    messages_pending: int  # messages without insights yet
    messages_not_normalized: int  # of those, not normalized yet: their text is not known, so not counted
    threads_pending: int
    threads_rules: int  # bulk or automated: rules only, no call
    threads_covered: int  # their summary already covers every message: no call
    threads_llm: int  # one request each
    threads_incremental: int  # of those, sending only new messages with the previous summary
    prompt_tokens: int
    completion_tokens: int  # assumed: TYPICAL_COMPLETION_TOKENS per request
    cost_usd: float
    max_cost_usd: float  # every answer using its whole completion allowance
    daily_budget_usd: float
    redaction: bool

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost_usd"] = round(self.cost_usd, 6)
        out["max_cost_usd"] = round(self.max_cost_usd, 6)
        return out


def estimate_pending(engine: Engine, settings: Settings, account_id: int | None = None) -> Estimate:
    options = PlanOptions(text_cap=settings.insight_message_chars, max_messages=settings.insight_thread_messages,
                          redact_secrets=redaction_enabled(settings))
    prices = Prices.from_settings(settings)
    scope = [Message.insight_at.is_(None)] + ([Message.account_id == account_id] if account_id is not None else [])
    with transaction(engine) as s:
        pending, not_normalized = s.execute(
            select(func.count(), func.count().filter(Message.normalized_at.is_(None))).where(*scope)
        ).one()
        thread_ids = [int(t) for t in s.execute(
            select(Message.thread_id).where(*scope, Message.normalized_at.is_not(None), Message.thread_id.is_not(None))
            .distinct().order_by(Message.thread_id)
        ).scalars() if t is not None]
    result = Estimate(mode=settings.insights, model=settings.ai_chat_model, messages_pending=int(pending),
                      messages_not_normalized=int(not_normalized), threads_pending=len(thread_ids), threads_rules=0,
                      threads_covered=0, threads_llm=0, threads_incremental=0, prompt_tokens=0,
                      completion_tokens=0, cost_usd=0.0, max_cost_usd=0.0,
                      daily_budget_usd=settings.ai_daily_budget_usd, redaction=options.redact_secrets)
    for start in range(0, len(thread_ids), THREADS_PER_BATCH):
        for subject, messages, coverage in _load(engine, thread_ids[start:start + THREADS_PER_BATCH]):
            plan = plan_thread(subject, messages, coverage, options)
            if plan.action == "rules":
                result.threads_rules += 1
            elif plan.action == "covered":
                result.threads_covered += 1
            else:
                assert plan.prompt is not None
                result.threads_llm += 1
                result.threads_incremental += int(plan.incremental)
                result.prompt_tokens += estimate_prompt_tokens(plan.prompt.messages)
    # Priced in rules mode too: what switching to MAILPIPE_INSIGHTS=llm would cost is the question then.
    result.completion_tokens = result.threads_llm * TYPICAL_COMPLETION_TOKENS
    result.cost_usd = prices.cost(result.prompt_tokens, result.completion_tokens)
    result.max_cost_usd = prices.cost(result.prompt_tokens, result.threads_llm * settings.insight_max_output_tokens)
    return result


def _load(engine: Engine, thread_ids: list[int]) -> list[tuple[str, list[ThreadMessage], Coverage | None]]:
    with transaction(engine) as s:
        subjects = {int(r[0]): str(r[1]) for r in s.execute(
            select(Thread.id, Thread.subject).where(Thread.id.in_(thread_ids)))}
        coverage = {
            int(r[0]): Coverage(str(r[1]), str(r[2]), int(r[3]), r[4])
            for r in s.execute(select(Insight.thread_id, Insight.source, Insight.summary, Insight.summarized_messages,
                                      Insight.summarized_through).where(Insight.thread_id.in_(thread_ids)))
        }
        messages: dict[int, list[ThreadMessage]] = defaultdict(list)
        for r in s.execute(
            select(Message.thread_id, Message.id, Message.from_email, Message.from_me, Message.sent_at,
                   Message.subject, Message.stripped_text, Message.category, Message.from_name)
            .where(Message.thread_id.in_(thread_ids), Message.normalized_at.is_not(None))
        ):
            view = ThreadMessageView(from_email=r[2], from_me=bool(r[3]), date=r[4], subject=r[5] or "",
                                     stripped=r[6] or "", category=r[7] or "personal")
            messages[int(r[0] or 0)].append(ThreadMessage(int(r[1]), view, r[8]))
    return [(subjects.get(t) or "", messages[t], coverage.get(t)) for t in thread_ids if messages.get(t)]
