"""The chain per window: ingest -> normalize -> contacts -> group(embed, insight)."""

from __future__ import annotations

from celery import chain, group
from celery.canvas import Signature

from tasks.stages import contacts, embed, ingest, insight, normalize


def window_chain(window_id: int) -> Signature:
    return chain(
        ingest.si(window_id),
        normalize.si(window_id),
        contacts.si(window_id),
        group(embed.si(window_id), insight.si(window_id)),
    )


def dispatch_window(window_id: int) -> None:
    window_chain(window_id).apply_async()
