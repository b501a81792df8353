"""The beat schedule: what runs periodically (run exactly one `celery -A tasks beat`).

With a Redis broker the scheduler is RedBeat (tasks/config.py): the schedule lives in Redis and a lock
held by the running beat makes a second one wait instead of sending everything twice.

Every entry expires after one period: a message still queued when the next is due is stale (the next
one reads the same rows), and workers drop it instead of running both.
"""

from __future__ import annotations

from typing import Any

from pipeline.settings import Settings


def _every(task: str, seconds: float) -> dict[str, Any]:
    return {"task": task, "schedule": seconds, "options": {"expires": seconds}}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule = {
        "enrichment-sweep": _every("mailpipe.sweep_enrichment", settings.enrichment_sweep_seconds),
        "watchdog": _every("mailpipe.watchdog", settings.watchdog_seconds),
        "retention": _every("mailpipe.retention", settings.retention_interval_seconds),
        "reconcile-counters": _every("mailpipe.reconcile_counters", settings.reconcile_seconds),
    }
    if settings.gmail_sync_interval_seconds > 0:
        # One entry for every account: the task fans out a sync per account, each at a random point of the
        # jitter window, coalesced with any sync already queued (push, web hook).
        schedule["gmail-sync"] = _every("mailpipe.schedule_syncs", settings.gmail_sync_interval_seconds)
    if settings.gmail_push_topic:
        schedule["renew-watches"] = _every("mailpipe.renew_watches", settings.watch_renew_seconds)
    return schedule
