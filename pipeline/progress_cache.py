"""Finished runs' progress figures, kept so `mailpipe status` does not aggregate them again.

At 1M messages `status` shows ~170 runs, almost all finished; aggregating their windows and failures
was ~8 ms of each call (docs/PERFORMANCE.md, db-scale). A run's figures are stored with the snapshot of
the one statement that computed them (by the call that finishes the run, `pipeline.runs.maybe_finish_run`,
or by `status` when it had to aggregate them), and used while no transaction that changed the run's
windows or failures committed after that snapshot: migration 0015's triggers log every such transaction
in `run_changes`, and the check is made in the statement that reads the cached figures (the migration's
docstring gives the argument). Nothing is ever invalidated, so caching never makes a writer wait.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from pipeline.storage.db import transaction
from pipeline.storage.models import STAGES

log = logging.getLogger(__name__)

# Bumped whenever the figures or their meaning change: rows of another layout are recomputed.
# 2: the figures as one list. 1 kept an object keyed by figure: parsing it, building the run's
# RunProgress and then its entry took `status` 34 µs a run, ~15 from the list (docs/PERFORMANCE.md,
# tenth round).
VERSION = 2
# RunProgress's fields that come from the windows and failures (the rest are the run's own columns).
FIGURES = ("windows_finished", "stage_done", "stage_failed_windows", "enrichment_owed", "new_messages",
           "duplicates", "failed_messages", "gone_messages", "chunks_embedded", "quota_units")
PER_STAGE = ("stage_done", "stage_failed_windows")
# Where each figure sits in a cached row's list: FIGURES in order, a per-stage figure once per stage
# (its stage; None for a figure of the whole run). SLOTS, AT, document() and the SQL that computes the
# list (pipeline.runs) all follow it.
KEYS = tuple((name, st) for name in FIGURES for st in (STAGES if name in PER_STAGE else (None,)))
SLOTS = tuple(f"{name}.{st}" if st else name for name, st in KEYS)


def _positions() -> dict[str, int | slice]:
    """Each figure's index in a cached row's list, or a per-stage figure's slice of it."""
    first: dict[str, int] = {}
    for i, (name, _) in enumerate(KEYS):
        first.setdefault(name, i)
    return {name: slice(i, i + len(STAGES)) if name in PER_STAGE else i for name, i in first.items()}


_AT = _positions()
# Written into every cached row and required of the rows read: a row of another version, or written
# when the stages were others, is not read (and is recomputed).
LAYOUT = f"{VERSION}:{','.join(SLOTS)}"

# A run's cached list, when it is still current and of this LAYOUT (`:layout`), as the text of a LATERAL
# subquery for a statement naming its run `r` (pipeline.runs.progress_sql). A change the cached snapshot
# did not see makes it stale; transactions below the snapshot's xmin all finished before it was taken,
# so only the run's change rows from there on are read (the primary key's range). As text, for
# figures_from: with psycopg loading jsonb, `status`'s latest-runs statement took 7.5 ms with its 171 rows
# fetched, 3.7 as text (ad-hoc timeit at 1M; docs/PERFORMANCE.md, ninth round).
CURRENT_SQL = (
    "SELECT (p.progress->'f')::text AS cached FROM run_progress_cache p "
    "WHERE p.run_id = r.id AND p.progress->>'layout' = :layout "
    # A list of its slots (CASE: a condition's operands are not evaluated in any set order).
    "AND CASE WHEN jsonb_typeof(p.progress->'f') = 'array' THEN jsonb_array_length(p.progress->'f') END "
    f"= {len(SLOTS)} "
    "AND NOT EXISTS ("
    "SELECT FROM run_changes ch WHERE ch.run_id = p.run_id AND ch.xact >= p.snap_xmin "
    "AND NOT pg_visible_in_snapshot(ch.xact::text::xid8, p.snap::pg_snapshot))"
)


def figures_from(cached: str | None) -> dict[str, Any] | None:
    """The figures of a list's text (CURRENT_SQL's, or aggregated by pipeline.runs.progress_sql), or None
    when there is none or it is not a list of SLOTS."""
    if cached is None:
        return None
    try:
        values = json.loads(cached)
    except ValueError:
        return None  # not written by this code: recomputed
    if not isinstance(values, list) or len(values) != len(SLOTS):
        return None
    return {name: dict(zip(STAGES, values[at], strict=True)) if name in PER_STAGE else values[at]
            for name, at in _AT.items()}


def document(figures: Mapping[str, Any]) -> dict[str, Any]:
    """What a cached row keeps of a run's figures: their values in SLOTS' order, and the LAYOUT."""
    return {"layout": LAYOUT, "f": [figures[name][st] if st else figures[name] for name, st in KEYS]}


# Every run's figures in one JSON object keyed by run id: a VALUES row per run made SQLAlchemy compile a
# 166-row statement (664 parameters) anew on every store, 14.5 ms at 1M, and a jsonb[] parameter had
# psycopg quote each element in Python, ~4.5 ms (ad-hoc); one string is encoded by json in C.
_STORE = text(
    "INSERT INTO run_progress_cache (run_id, snap_xmin, snap, progress) "
    "SELECT key::bigint, :xmin, :snap, value FROM jsonb_each(CAST(:docs AS jsonb)) ORDER BY key::bigint "
    "ON CONFLICT (run_id) DO UPDATE SET snap_xmin = excluded.snap_xmin, snap = excluded.snap, "
    "progress = excluded.progress"
)


def store(engine: Engine, snapshot: str, figures: Mapping[int, Mapping[str, Any]]) -> int:
    """Keep these runs' figures, computed in `snapshot` (pg_snapshot's text form: that of the one statement
    that computed them, pipeline.runs.progress_sql). Returns the rows written.

    A run deleted since has nothing to keep: the foreign key refuses the row and nothing is written
    (the next call tries again)."""
    if not figures:
        return 0
    # Inserted in run order (ORDER BY): two stores never wait on each other in a circle.
    docs = json.dumps({str(run_id): document(f) for run_id, f in figures.items()})
    params = {"xmin": int(snapshot.split(":", 1)[0]), "snap": snapshot, "docs": docs}
    try:
        with transaction(engine) as s:
            # A cached row lost in a crash is recomputed: no need to wait for the WAL flush.
            s.execute(text("SET LOCAL synchronous_commit = off"))
            s.execute(_STORE, params)
    except IntegrityError as exc:
        log.info("run progress not cached (a run was deleted meanwhile): %s", exc.orig)
        return 0
    return len(figures)


__all__ = ["CURRENT_SQL", "FIGURES", "KEYS", "LAYOUT", "SLOTS", "VERSION", "document", "figures_from",
           "store"]
