"""What one thread needs from insights, decided without calling anything (pure).

- rules:   its messages are all bulk or automated (header rules): the rules insight, never an LLM call;
- covered: its LLM summary already covers every message: nothing to do (a re-sync costs no call);
- llm:     a request to make: the whole thread, or only the messages after the ones the previous
           summary covers, sent with that summary (incremental).

The stage and `mailpipe enrich --estimate` both plan with this, so the estimate prices the requests
the stage would send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.insights.prompt import Prompt, PromptMessage, build_prompt
from pipeline.insights.rules import PERSONAL, thread_insight
from pipeline.records import InsightResult, ThreadMessageView

LLM_SOURCE_PREFIX = "llm:"


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    id: int
    view: ThreadMessageView
    from_name: str | None = None


@dataclass(frozen=True, slots=True)
class Coverage:
    """The stored insight of a thread, as far as planning needs it."""

    source: str
    summary: str
    messages: int  # summarized_messages
    through: int | None  # summarized_through


@dataclass(frozen=True, slots=True)
class PlanOptions:
    text_cap: int
    max_messages: int
    redact_secrets: bool


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    action: Literal["rules", "covered", "llm"]
    rules: InsightResult
    prompt: Prompt | None  # set for "llm"
    covers: int  # messages the answer will cover (all of the thread's, in date order)
    through: int | None  # the last of them
    incremental: bool
    sent: int  # messages in the request


def ordered(messages: list[ThreadMessage]) -> list[ThreadMessage]:
    """Date order, undated first, ties by id: the order coverage is counted in."""
    return sorted(messages, key=lambda m: (m.view.date is not None,
                                           m.view.date.timestamp() if m.view.date else 0.0, m.id))


def plan_thread(subject: str, messages: list[ThreadMessage], coverage: Coverage | None,
                options: PlanOptions) -> ThreadPlan:
    if not messages:
        raise ValueError("a thread has at least one message")
    chronological = ordered(messages)
    rules = thread_insight([m.view for m in chronological])
    through = chronological[-1].id
    total = len(chronological)
    if rules.category != PERSONAL:  # header rules first: bulk and automated mail never reaches the LLM
        return ThreadPlan("rules", rules, None, total, through, False, 0)
    earlier = _covered_prefix(chronological, coverage)
    if earlier == total:
        return ThreadPlan("covered", rules, None, total, through, False, 0)
    new = chronological[earlier:]
    sent = new[-options.max_messages:]
    prompt = build_prompt(
        subject, [_prompt_message(m) for m in sent], text_cap=options.text_cap,
        redact_secrets=options.redact_secrets,
        previous_summary=coverage.summary if earlier and coverage else None, earlier_messages=earlier,
        omitted_messages=len(new) - len(sent),
    )
    return ThreadPlan("llm", rules, prompt, total, through, earlier > 0, len(sent))


def _covered_prefix(chronological: list[ThreadMessage], coverage: Coverage | None) -> int:
    """How many leading messages the stored LLM summary covers; 0 when it covers none or the thread
    changed under it (an older message arrived since: the summary is then redone from scratch)."""
    if coverage is None or not coverage.source.startswith(LLM_SOURCE_PREFIX) or coverage.messages <= 0:
        return 0
    k = coverage.messages
    if k > len(chronological) or chronological[k - 1].id != coverage.through:
        return 0
    return k


def _prompt_message(m: ThreadMessage) -> PromptMessage:
    sender = m.view.from_email or ""
    if m.from_name:
        sender = f"{m.from_name} <{sender}>" if sender else m.from_name
    return PromptMessage(sender=sender, from_owner=m.view.from_me, date=m.view.date,
                         subject=m.view.subject, text=m.view.stripped)
