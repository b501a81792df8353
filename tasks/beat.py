"""The beat schedule: what runs periodically (run exactly one `celery -A tasks beat`)."""

from __future__ import annotations

from typing import Any

from pipeline.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    sweep = settings.enrichment_sweep_seconds
    return {
        "enrichment-sweep": {
            "task": "mailpipe.sweep_enrichment",
            "schedule": sweep,
            # A sweep still queued when the next is due is stale: the next one reads the same rows.
            "options": {"expires": sweep},
        },
    }
