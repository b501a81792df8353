"""Periodic upkeep run by beat: the enrichment sweep."""

from __future__ import annotations

from typing import Any

from pipeline.enrichment import endpoint_wait, sweep
from tasks import context
from tasks.app import app
from tasks.chains import dispatch_stage


@app.task(name="mailpipe.sweep_enrichment")
def sweep_enrichment() -> dict[str, Any]:
    engine, settings = context.engine(), context.settings()
    return sweep(engine, dispatch_stage, endpoint_open=lambda: endpoint_wait(settings, engine)).as_dict()
