"""Periodic upkeep run by beat: the enrichment sweep, the stuck-run watchdog, retention, counter reconciliation.

Each is a few queries (pipeline/maintenance.py, pipeline/enrichment.py) on the `normalize` queue: no AI slot,
no Gmail quota. Running one twice, or two at once, is harmless: every step is conditional on the rows.
"""

from __future__ import annotations

from typing import Any

from pipeline.enrichment import endpoint_wait, sweep
from pipeline.maintenance import reconcile, retention, watchdog
from tasks import context
from tasks.app import app
from tasks.chains import dispatch_stage, dispatch_window


@app.task(name="mailpipe.sweep_enrichment")
def sweep_enrichment() -> dict[str, Any]:
    engine, settings = context.engine(), context.settings()
    return sweep(engine, dispatch_stage, endpoint_open=lambda: endpoint_wait(settings, engine)).as_dict()


@app.task(name="mailpipe.watchdog")
def watch_runs() -> dict[str, Any]:
    """Runs whose driver is gone: abandoned with the reason, or their lost windows sent again."""
    return watchdog(context.engine(), context.settings(), dispatch_window).as_dict()


@app.task(name="mailpipe.retention")
def apply_retention() -> dict[str, int]:
    return retention(context.engine(), context.settings()).as_dict()


@app.task(name="mailpipe.reconcile_counters")
def reconcile_counters() -> dict[str, Any]:
    return reconcile(context.engine(), context.settings()).as_dict()
