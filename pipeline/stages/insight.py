"""Insight: rules-only thread insights (category, needs-reply, summary, actions) for touched threads."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.insights.rules import thread_insight
from pipeline.records import ThreadMessageView
from pipeline.runs import StageClaim
from pipeline.stages.normalize import window_messages
from pipeline.storage.models import Insight, Message, Thread


def insight_window(session: Session, claim: StageClaim) -> dict[str, int]:
    messages = [m for m in window_messages(session, claim.window_id, Message.insight_at) if m.normalized_at]
    thread_ids = sorted({m.thread_id for m in messages if m.thread_id is not None})
    if thread_ids:
        # Lock the threads (in id order) so two windows sharing a thread write its insight one after
        # the other, the later one reading every message the earlier one saw.
        session.execute(select(Thread.id).where(Thread.id.in_(thread_ids)).order_by(Thread.id).with_for_update())
    for thread_id in thread_ids:
        _refresh(session, claim.account_id, thread_id)
    for m in messages:
        m.insight_at = func.now()
    return {}


def _refresh(session: Session, account_id: int, thread_id: int) -> None:
    rows = session.execute(
        select(Message.from_email, Message.from_me, Message.sent_at, Message.subject, Message.stripped_text,
               Message.category)
        .where(Message.thread_id == thread_id, Message.normalized_at.is_not(None))
        .order_by(Message.sent_at.asc().nulls_first(), Message.id)
    ).all()
    views = [
        ThreadMessageView(from_email=r[0], from_me=bool(r[1]), date=r[2], subject=r[3] or "",
                          stripped=r[4] or "", category=r[5] or "personal")
        for r in rows
    ]
    if not views:
        return
    result = thread_insight(views)
    values = {
        "category": result.category, "needs_reply": result.needs_reply, "summary": result.summary,
        "action_items": result.action_items, "source": result.source, "updated_at": func.now(),
    }
    session.execute(
        pg_insert(Insight)
        .values(thread_id=thread_id, account_id=account_id, **values)
        .on_conflict_do_update(index_elements=[Insight.thread_id], set_=values)
    )
