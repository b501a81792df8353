"""Read models of insights for the CLI: the insight list, one thread with its messages, the AI ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from pipeline.errors import BadInputError
from pipeline.storage.db import transaction
from pipeline.storage.models import AiUsage, Insight, Message, Thread

MESSAGE_TEXT_CHARS = 4000  # `mailpipe thread` shows this much of each message's text


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def insight_rows(engine: Engine, account_id: int, limit: int, *, needs_reply: str | None = None,
                 category: str | None = None) -> list[dict[str, Any]]:
    """Thread insights, latest thread first, optionally of one needs-reply state or category."""
    with transaction(engine) as s:
        # On the thread's account (the insight's is the same): the account's threads are walked newest first
        # (ix_threads_account_id_recent) until `limit` have an insight, instead of every insight of the
        # account being joined and sorted. A needs-reply state adds the insight's account too, so that its
        # (account_id, needs_reply) index can serve a rare state; alone, the two conditions make the planner
        # expect a tiny join and sort the whole account (docs/PERFORMANCE.md, db-scale).
        q = (
            select(Insight, Thread)
            .join(Thread, Thread.id == Insight.thread_id)
            .where(Thread.account_id == account_id)
            .order_by(Thread.last_at.desc().nulls_last(), Thread.id.desc())
            .limit(limit)
        )
        if needs_reply:
            q = q.where(Insight.account_id == account_id, Insight.needs_reply == needs_reply)
        if category:
            q = q.where(Insight.category == category)
        rows = s.execute(q).all()
    return [insight_dict(i, t) for i, t in rows]


def insight_dict(i: Insight | Any, t: Thread | Any) -> dict[str, Any]:
    """An insight and its thread: objects, or rows with their columns' names (one row may be both)."""
    return {
        "thread_id": t.id, "subject": t.subject, "messages": t.message_count, "last_at": _iso(t.last_at),
        "category": i.category, "needs_reply": i.needs_reply, "summary": i.summary,
        "action_items": i.action_items, "source": i.source, "summarized_messages": i.summarized_messages,
        "updated_at": _iso(i.updated_at),
    }


def thread_detail(engine: Engine, thread_id: int) -> dict[str, Any]:
    """One thread: its insight (None until the insight stage ran) and its messages in date order."""
    with transaction(engine) as s:
        thread = s.get(Thread, thread_id)
        if thread is None:
            raise BadInputError(f"no thread {thread_id}; `mailpipe insights` lists them")
        insight = s.get(Insight, thread_id)
        messages = s.execute(
            select(Message).where(Message.thread_id == thread_id)
            .order_by(Message.sent_at.asc().nulls_first(), Message.id)
        ).scalars().all()
        return {
            "thread_id": thread.id, "subject": thread.subject, "message_count": thread.message_count,
            "first_at": _iso(thread.first_at), "last_at": _iso(thread.last_at),
            "insight": insight_dict(insight, thread) if insight else None,
            "messages": [
                {"id": m.id, "date": _iso(m.sent_at), "from": m.from_email, "from_name": m.from_name,
                 "from_me": bool(m.from_me), "subject": m.subject, "category": m.category,
                 "text": (m.stripped_text or m.full_text or "")[:MESSAGE_TEXT_CHARS]}
                for m in messages
            ],
        }


def usage_rows(engine: Engine, account_id: int | None = None, days: int = 7) -> list[dict[str, Any]]:
    """The AI ledger's latest days (per account), newest first."""
    with transaction(engine) as s:
        q = select(AiUsage).order_by(AiUsage.day.desc(), AiUsage.account_id).limit(days * 50)
        if account_id is not None:
            q = q.where(AiUsage.account_id == account_id).limit(days)
        rows = s.execute(q).scalars().all()
        return [{"account_id": r.account_id, "day": r.day.isoformat(), "calls": r.calls,
                 "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                 "cost_usd": round(r.cost_usd, 6), "reserved_usd": round(r.reserved_usd, 6)} for r in rows]
