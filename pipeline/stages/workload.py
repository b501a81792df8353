"""How much work a window's stage still holds: the units its time limits are sized by.

    ingest     window size × the seconds per message the account's recent fetches took (HTTP latency
               and quota waits); before any was observed, what the quota allows with every window of
               the account in flight sharing it. A mailbox file's window fetches nothing: 0.
    normalize  bytes of raw mail not normalized yet
    embed      tokens of text not embedded yet (4 characters per token, as the tokenizers average)
    insight    tokens of text without insights yet

Only what is still owed counts, so a task re-queued after its soft limit gets limits for the rest.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from pipeline.resilience.quota import CostTable
from pipeline.resilience.timeouts import STAGES, Limits, Stage, ingest_units, stage_limits
from pipeline.settings import Settings
from pipeline.storage.db import transaction
from pipeline.storage.models import Message, SyncRun, Window, WindowItem

CHARS_PER_TOKEN = 4
RECENT_WINDOWS = 10  # fetch latency is averaged over the account's last this many fetched windows


def stage_units(engine: Engine, settings: Settings, window_id: int, stage: Stage | str) -> float:
    """The units of work the stage still owes for the window (see the module docstring)."""
    with transaction(engine) as s:
        if stage == "ingest":
            unfetched = s.execute(
                select(func.count()).where(WindowItem.window_id == window_id, WindowItem.gmail_id.is_not(None),
                                           WindowItem.raw.is_(None), WindowItem.outcome.is_(None))
            ).scalar_one()
            return ingest_units(int(unfetched), _seconds_per_message(s, settings, window_id)) if unfetched else 0.0
        if stage not in STAGES:
            raise ValueError(f"no units for stage {stage!r}; valid: {', '.join(STAGES)}")
        pending = {"normalize": Message.normalized_at, "embed": Message.embedded_at,
                   "insight": Message.insight_at}[stage]
        measure: Any = (Message.size if stage == "normalize"
                        else func.length(func.coalesce(Message.stripped_text, Message.full_text, "")) / CHARS_PER_TOKEN)
        total = s.execute(
            select(func.coalesce(func.sum(measure), 0))
            .select_from(WindowItem)
            .join(Message, Message.id == WindowItem.message_id)
            .where(WindowItem.window_id == window_id, pending.is_(None))
        ).scalar_one()
        return float(total)


def window_limits(engine: Engine, settings: Settings, window_id: int, stage: str) -> Limits | None:
    """Soft and hard limits for the window's stage task; None for a stage without dynamic limits."""
    if stage not in STAGES:
        return None
    timed: Stage = stage  # type: ignore[assignment]  # checked just above
    return stage_limits(settings, timed, stage_units(engine, settings, window_id, timed))


def quota_seconds_per_message(settings: Settings) -> float:
    """What the account's quota allows per messages.get when every window in flight shares it."""
    table = CostTable.for_regime(settings.gmail_regime, settings.gmail_quota_per_minute)
    per_second = table.per_user_per_minute * settings.gmail_quota_headroom / 60.0
    return table.cost("messages.get") / per_second * settings.windows_in_flight


def _seconds_per_message(session: Any, settings: Settings, window_id: int) -> float:
    account = select(SyncRun.account_id).join(Window, Window.run_id == SyncRun.id).where(Window.id == window_id)
    # The account's runs newest first (ix_sync_runs_account_id_started_at), then their windows: the walk
    # stops at the tenth fetched window. Ordered by window id alone, it read the windows of every account
    # created since, up to 15k buffers at 1M messages (docs/PERFORMANCE.md, db-scale). One account's runs
    # never overlap (the per-account lock): newest run, then newest window, is newest window first.
    recent = (
        select(Window.fetch_seconds, Window.size)
        .join(SyncRun, SyncRun.id == Window.run_id)
        .where(SyncRun.account_id == account.scalar_subquery(), Window.fetch_seconds > 0)
        .order_by(SyncRun.started_at.desc(), Window.id.desc())
        .limit(RECENT_WINDOWS)
        .subquery()
    )
    seconds, messages = session.execute(
        select(func.coalesce(func.sum(recent.c.fetch_seconds), 0), func.coalesce(func.sum(recent.c.size), 0))
    ).one()
    if messages:
        return float(seconds) / float(messages)
    return quota_seconds_per_message(settings)
