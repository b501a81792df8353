"""Run and window state in Postgres: the per-account lock, windows, stage transitions, completion.

Celery only carries window ids. Whether a stage ran, failed or is still owed is read from the
`windows` row, so progress, resume and status need no result backend and no chord.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError, NoResultFound, SQLAlchemyError
from sqlalchemy.orm import Session

from pipeline import progress_cache
from pipeline.enrichment import ENRICHMENT_STAGES, RESUMABLE_CLASSES
from pipeline.errors import RunConflictError
from pipeline.records import RawMessage
from pipeline.storage.db import reading, transaction
from pipeline.storage.models import (
    DONE,
    FAILED,
    RUNNING,
    SKIPPED,
    STAGES,
    TERMINAL_STATES,
    Account,
    Failure,
    SyncRun,
    Window,
    WindowItem,
)

log = logging.getLogger(__name__)

# Which stage must be done before another may run. Embed and insight need normalized text only,
# so a contacts failure does not block them.
UPSTREAM: dict[str, str | None] = {
    "ingest": None,
    "normalize": "ingest",
    "contacts": "normalize",
    "embed": "normalize",
    "insight": "normalize",
}


def downstream_of(stage: str) -> list[str]:
    """Every stage that (transitively) needs `stage`."""
    out: list[str] = []
    frontier = [stage]
    while frontier:
        current = frontier.pop()
        for name, up in UPSTREAM.items():
            if up == current and name not in out:
                out.append(name)
                frontier.append(name)
    return out


_TERMINAL_SQL = "('" + "','".join(TERMINAL_STATES) + "')"
_FINISHED_SQL = " AND ".join(f"{s} IN {_TERMINAL_SQL}" for s in STAGES)


@dataclass(frozen=True, slots=True)
class StageClaim:
    """What a stage task learns when it claims its stage of a window."""

    window_id: int
    run_id: int
    account_id: int
    attempts: int
    upstream_state: str | None
    size: int = 0  # messages in the window


# ---------------------------------------------------------------- accounts and runs


def ensure_account(engine: Engine, email: str, own_addresses: Iterable[str], kind: str = "mbox") -> int:
    """Create the account or add newly seen own addresses to it; return its id."""
    own = sorted({a.lower() for a in own_addresses} | {email.lower()})
    with transaction(engine) as s:
        stmt = pg_insert(Account).values(email=email.lower(), kind=kind, own_addresses=own)
        upsert = stmt.on_conflict_do_update(
            index_elements=[Account.email],
            set_={
                "own_addresses": text(
                    "(SELECT array_agg(DISTINCT a ORDER BY a) FROM unnest(accounts.own_addresses || "
                    "excluded.own_addresses) AS a)"
                )
            },
        ).returning(Account.id)
        return int(s.execute(upsert).scalar_one())


QUEUED = "queued"  # a run status: a trigger's sync not started yet (at most one per account)


def begin_run(engine: Engine, account_id: int, mode: str, source: str, stale_seconds: float) -> int:
    """Open a run for the account, taking over a run whose driver is gone.

    The partial unique index on running runs is the lock: two drivers cannot both hold it. A
    running run is taken over when its driver process on this host no longer exists, or when its
    heartbeat is older than `stale_seconds` (a driver on another host).
    """
    _take_over_stale_runs(engine, account_id, stale_seconds)
    try:
        with transaction(engine) as s:
            run_id = s.execute(
                insert(SyncRun)
                .values(account_id=account_id, mode=mode, source=source, driver=this_driver())
                .returning(SyncRun.id)
            ).scalar_one()
    except IntegrityError as exc:
        raise _conflict(engine, account_id, stale_seconds) from exc
    return int(run_id)


def queue_run(session: Session, account_id: int, *, mode: str = "auto", join_running: bool,
              queued_stale_seconds: float, running_stale_seconds: float) -> tuple[int, bool, str]:
    """The run a sync trigger stands for, in the caller's transaction: (run id, whether it was created, its
    status).

    The account's queued run when there is one (triggers coalesce into it until a sync task adopts it);
    with `join_running`, else its running Gmail sync (not a mailbox import); else a new queued run. The
    account row is locked first (FOR NO KEY UPDATE, which rows referencing the account do not wait for),
    so concurrent triggers of one account decide one after the other and create one run. A queued run
    that no task has touched for `queued_stale_seconds` was lost with its task message and is abandoned;
    a running run whose heartbeat is older than `running_stale_seconds` is not joined (the new run's
    sync takes it over). A "full" request makes the queued run it joins full: a full sync covers what
    an incremental would.
    """
    email = session.execute(
        select(Account.email).where(Account.id == account_id).with_for_update(key_share=True)
    ).scalar_one()
    rows = session.execute(
        text(
            # Two selects, so that each is served by its partial unique index.
            "(SELECT id, status, mode, heartbeat_at < now() - make_interval(secs => :qs) FROM sync_runs "
            "WHERE account_id = :a AND status = 'queued') UNION ALL "
            "(SELECT id, status, mode, heartbeat_at < now() - make_interval(secs => :rs) FROM sync_runs "
            "WHERE account_id = :a AND status = 'running' AND source LIKE 'gmail:%')"
        ),
        {"a": account_id, "qs": float(queued_stale_seconds), "rs": float(running_stale_seconds)},
    ).all()
    for run_id, status, run_mode, stale in sorted(rows, key=lambda r: r[1] != QUEUED):
        if status == QUEUED:
            if not stale:
                if mode == "full" and run_mode != "full":
                    session.execute(update(SyncRun).where(SyncRun.id == run_id).values(mode="full"))
                return int(run_id), False, QUEUED
            session.execute(
                update(SyncRun).where(SyncRun.id == run_id).values(
                    status="abandoned", finished_at=func.now(),
                    error=f"no sync task started it within {int(queued_stale_seconds)} s (its task was lost); "
                          "a new run was queued")
            )
        elif join_running and not stale:
            return int(run_id), False, RUNNING
    run_id = session.execute(
        insert(SyncRun)
        .values(account_id=account_id, mode=mode, source=f"gmail:{email}", status=QUEUED)
        .returning(SyncRun.id)
    ).scalar_one()
    return int(run_id), True, QUEUED


def adopt_queued_run(engine: Engine, account_id: int, stale_seconds: float) -> tuple[int, str] | None:
    """A sync task starts: the account's queued run becomes running, driven by this process.

    Returns the run id and the mode it was queued with, or None when nothing is queued. While another
    run is running (and not stale) the queued run stays queued, marked as waited for so that it is
    not taken for lost, and RunConflictError says so: the task retries later.
    """
    _take_over_stale_runs(engine, account_id, stale_seconds)
    try:
        with transaction(engine) as s:
            row = s.execute(
                update(SyncRun)
                .where(SyncRun.account_id == account_id, SyncRun.status == QUEUED)
                .values(status=RUNNING, driver=this_driver(), started_at=func.now(), heartbeat_at=func.now())
                .returning(SyncRun.id, SyncRun.mode)
            ).first()
    except IntegrityError as exc:
        with transaction(engine) as s:
            s.execute(update(SyncRun).where(SyncRun.account_id == account_id, SyncRun.status == QUEUED)
                      .values(heartbeat_at=func.now()))
        raise _conflict(engine, account_id, stale_seconds) from exc
    return None if row is None else (int(row[0]), str(row[1]))


def _take_over_stale_runs(engine: Engine, account_id: int, stale_seconds: float) -> None:
    with transaction(engine) as s:
        for run in s.execute(
            select(SyncRun).where(SyncRun.account_id == account_id, SyncRun.status == RUNNING).with_for_update()
        ).scalars():
            stale = s.execute(
                select(SyncRun.heartbeat_at < func.now() - text(f"interval '{float(stale_seconds)} seconds'"))
                .where(SyncRun.id == run.id)
            ).scalar_one()
            if stale or driver_is_dead(run.driver):
                run.status, run.finished_at = "abandoned", func.now()
                run.error = "its driver stopped; taken over by a new run"


def _conflict(engine: Engine, account_id: int, stale_seconds: float) -> RunConflictError:
    with transaction(engine) as s:
        active = s.execute(
            select(SyncRun.id).where(SyncRun.account_id == account_id, SyncRun.status == RUNNING)
        ).scalar()
    return RunConflictError(
        f"run {active} is already active for this account; wait for it to finish "
        f"(a run whose process died is taken over after {int(stale_seconds)} s)"
    )


def this_driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def driver_is_dead(driver: str | None) -> bool:
    """True only when the driver ran on this host and its process is gone."""
    if not driver or ":" not in driver:
        return False
    host, _, pid = driver.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def abandon_run(engine: Engine, run_id: int, reason: str) -> None:
    """End a running or queued run that will not finish, saying why."""
    with transaction(engine) as s:
        s.execute(
            update(SyncRun)
            .where(SyncRun.id == run_id, SyncRun.status.in_((RUNNING, QUEUED)))
            .values(status="abandoned", error=reason, finished_at=func.now())
        )


def heartbeat(engine: Engine, run_id: int, entries: int | None = None) -> None:
    values: dict[str, object] = {"heartbeat_at": func.now()}
    if entries is not None:
        values["entries"] = entries
    with transaction(engine) as s:
        s.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values))


def end_reading(engine: Engine, run_id: int, entries: int, windows_total: int) -> None:
    with transaction(engine) as s:
        s.execute(
            update(SyncRun)
            .where(SyncRun.id == run_id)
            .values(reading_done=True, entries=entries, windows_total=windows_total, heartbeat_at=func.now())
        )
    maybe_finish_run(engine, run_id)


def maybe_finish_run(engine: Engine, run_id: int) -> bool:
    """Mark the run done once reading is over and every window is finished. Safe to call often.

    The call that finishes it also caches its progress figures, so that the next `status` does not
    aggregate them (pipeline.progress_cache)."""
    with transaction(engine) as s:
        result = s.execute(
            text(
                "UPDATE sync_runs SET status = 'done', finished_at = now() "
                "WHERE id = :id AND status = 'running' AND reading_done "
                "AND NOT EXISTS (SELECT 1 FROM windows WHERE run_id = :id AND NOT finished)"
            ),
            {"id": run_id},
        )
        finished = bool(result.rowcount)  # type: ignore[attr-defined]
    if finished:
        try:
            remember_progress(engine, [run_id])
        except SQLAlchemyError as exc:
            # Only a cache: the run is done either way, and `status` computes and caches it instead.
            log.warning("run %s finished; its progress was not cached: %s", run_id, exc)
    return finished


def remember_progress(engine: Engine, run_ids: Sequence[int], *, aggregate: bool = False) -> int:
    """Compute these runs' progress in one snapshot and cache the figures of those finished; returns
    how many were cached. `aggregate`: for runs known to have no current cached row, which the statement
    then does not look up."""
    statement = _RUNS_BY_ID_AGGREGATED if aggregate else _RUNS_BY_ID
    with reading(engine) as conn:  # one statement: its snapshot is the figures'
        read = figures_of(conn.execute(statement, {"run_ids": list(run_ids)}).all())
    return progress_cache.store(engine, read.snapshot, read.cacheable) if read.snapshot is not None else 0


FILL_LOCK = 7_240_015  # advisory lock id of fill_progress_cache: two workers starting at once fill once
FILL_BATCH = 1000  # runs per statement: at 1M (5,036 finished runs), 0.19-0.20 s in all against 0.26 by
# 200 (ad-hoc, fill_progress_cache timed on db-scale's database; docs/PERFORMANCE.md, seventeenth round)
# Finished runs (every window finished) without a cached list of this layout: those `status` would
# aggregate. A stale row of this layout is left to `status`, which aggregates that run alone.
_UNCACHED = text(
    "SELECT r.id FROM sync_runs r WHERE r.status NOT IN (:queued, :running) "
    "AND NOT EXISTS (SELECT FROM windows w WHERE w.run_id = r.id AND NOT w.finished) "
    "AND NOT EXISTS (SELECT FROM run_progress_cache p WHERE p.run_id = r.id AND p.progress->>'layout' = :layout) "
    "ORDER BY r.id"
).bindparams(queued=QUEUED, running=RUNNING, layout=progress_cache.LAYOUT)


def fill_progress_cache(engine: Engine, batch: int = FILL_BATCH) -> int | None:
    """Cache the figures of every finished run that has none of this code's layout; returns how many were
    cached, or None when another process is filling (it holds the lock; this one does not wait).

    Run when a worker starts and after a schema upgrade: the first `status` after an upgrade that changed
    the cache's layout (progress_cache.VERSION), or after runs that finished before the cache existed, met
    every run uncached and aggregated them all, 13.3 ms at 1M against 6.9 cached (docs/PERFORMANCE.md,
    db-scale). Here that work is done once, before anyone waits on it."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        if not lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": FILL_LOCK}).scalar_one():
            return None
        try:
            ids = list(lock.execute(_UNCACHED).scalars())
            cached = 0
            for at in range(0, len(ids), batch):
                # Without the lookup of their cached rows: they have none of this layout. With it, from
                # the sixth batch on psycopg's prepared statement ran PostgreSQL's generic plan, made
                # when the emptied cache table had no pages: a scan of it per run, as it filled (at 1M
                # 0.85 s a fill against 0.2; ad-hoc, docs/PERFORMANCE.md, seventeenth round).
                cached += remember_progress(engine, ids[at:at + batch], aggregate=True)
            return cached
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": FILL_LOCK})


def fill_progress_cache_on_start(engine: Engine) -> int:
    """fill_progress_cache for a process that is starting: what it did is logged, and a failure only logged
    (the cache saves time, nothing more: `status` aggregates what is not in it). Returns the runs cached."""
    started = time.perf_counter()
    try:
        cached = fill_progress_cache(engine)
    except SQLAlchemyError as exc:
        log.warning("finished runs' progress not cached on start: %s", exc)
        return 0
    if cached is None:
        log.info("finished runs' progress: another process is caching it")
    elif cached:
        log.info("cached the progress of %d finished runs in %.2f s", cached, time.perf_counter() - started)
    return cached or 0


# ---------------------------------------------------------------- windows


def add_window(engine: Engine, run_id: int, seq: int, messages: Sequence[RawMessage]) -> int:
    """Save a window and its message references durably, before any task sees its id."""
    with transaction(engine) as s:
        window_id = s.execute(
            insert(Window).values(run_id=run_id, seq=seq, size=len(messages)).returning(Window.id)
        ).scalar_one()
        s.execute(
            insert(WindowItem),
            [
                {
                    "window_id": window_id,
                    "position": i,
                    "source_ref": m.source_ref,
                    "raw": m.raw,
                    "gmail_id": m.gmail_id,
                    "gmail_thread_id": m.gmail_thread_id,
                    "labels": list(m.labels),
                }
                for i, m in enumerate(messages)
            ],
        )
        s.execute(update(SyncRun).where(SyncRun.id == run_id).values(heartbeat_at=func.now()))
    return int(window_id)


@dataclass(frozen=True, slots=True)
class WindowBacklog:
    """A run's unfinished windows, and how many of them have not yet been ingested (for a Gmail window:
    waiting for its fetch or fetching)."""

    open: int
    before_ingest: int


def window_backlog(engine: Engine, run_id: int) -> WindowBacklog:
    with transaction(engine) as s:
        row = s.execute(
            select(func.count(), func.count().filter(Window.ingest.not_in(TERMINAL_STATES)))
            .select_from(Window).where(Window.run_id == run_id, ~Window.finished)
        ).one()
    return WindowBacklog(int(row[0]), int(row[1]))


def open_window_ids(engine: Engine, run_id: int) -> list[int]:
    with transaction(engine) as s:
        rows = s.execute(select(Window.id).where(Window.run_id == run_id, ~Window.finished).order_by(Window.seq))
        return [int(r) for r in rows.scalars()]


def settle_claim(engine: Engine, window_id: int, stage: str) -> None:
    """Undo a claim's delivery count: the task ended on its own (retry), it was not killed."""
    _check_stage(stage)
    with transaction(engine) as s:
        s.execute(
            text(
                f"UPDATE windows SET attempts = jsonb_set(attempts, '{{{stage}}}', "
                f"to_jsonb(greatest(coalesce((attempts->>'{stage}')::int, 0) - 1, 0))) WHERE id = :id"
            ),
            {"id": window_id},
        )


def stalled_windows(engine: Engine, run_id: int, idle_seconds: float) -> list[int]:
    """Unfinished windows whose row has not moved for `idle_seconds` (their task was lost)."""
    with transaction(engine) as s:
        rows = s.execute(
            select(Window.id).where(
                Window.run_id == run_id,
                ~Window.finished,
                Window.updated_at < func.now() - text(f"interval '{float(idle_seconds)} seconds'"),
            )
        )
        return [int(r) for r in rows.scalars()]


def touch_windows(engine: Engine, window_ids: Sequence[int]) -> None:
    with transaction(engine) as s:
        s.execute(update(Window).where(Window.id.in_(window_ids)).values(updated_at=func.now()))


def claim_stage(engine: Engine, window_id: int, stage: str) -> StageClaim | None:
    """Mark the stage running and count the delivery; None when the stage is already terminal."""
    _check_stage(stage)
    up = UPSTREAM[stage]
    with transaction(engine) as s:
        row = s.execute(
            text(
                f"UPDATE windows w SET {stage} = 'running', updated_at = now(), "
                f"attempts = jsonb_set(w.attempts, '{{{stage}}}', "
                f"to_jsonb(coalesce((w.attempts->>'{stage}')::int, 0) + 1)) "
                f"FROM sync_runs r WHERE w.id = :id AND r.id = w.run_id AND w.{stage} NOT IN {_TERMINAL_SQL} "
                f"RETURNING w.run_id, r.account_id, (w.attempts->>'{stage}')::int, "
                + (f"w.{up}" if up else "NULL") + ", w.size"
            ),
            {"id": window_id},
        ).first()
    if row is None:
        return None
    return StageClaim(window_id, int(row[0]), int(row[1]), int(row[2]), row[3], int(row[4]))


def complete_stage(session: Session, window_id: int, stage: str, **counters: int) -> None:
    """Mark the stage done inside the caller's transaction, so the work and the mark commit together."""
    _set_stage(session, window_id, stage, DONE, None, counters)


def fail_stage(engine: Engine, claim: StageClaim, stage: str, error_class: str, reason: str) -> None:
    """Mark the stage failed, block what depends on it, and record why."""
    with transaction(engine) as s:
        _set_stage(s, claim.window_id, stage, FAILED, f"{stage}: {error_class}: {reason}", {})
        for blocked in downstream_of(stage):
            s.execute(
                text(
                    f"UPDATE windows SET {blocked} = 'skipped' WHERE id = :id AND {blocked} NOT IN {_TERMINAL_SQL}"
                ),
                {"id": claim.window_id},
            )
        _finish_if_complete(s, claim.window_id)
        record_failure(s, claim.account_id, claim.run_id, claim.window_id, "window", stage, error_class, reason)
    maybe_finish_run(engine, claim.run_id)


def skip_stage(engine: Engine, claim: StageClaim, stage: str) -> None:
    with transaction(engine) as s:
        _set_stage(s, claim.window_id, stage, SKIPPED, None, {})
    maybe_finish_run(engine, claim.run_id)


def _set_stage(
    session: Session, window_id: int, stage: str, state: str, error: str | None, counters: dict[str, int]
) -> None:
    _check_stage(stage)
    sets = [f"{stage} = :state", "updated_at = now()"]
    params: dict[str, object] = {"id": window_id, "state": state}
    if error is not None:
        sets.append("error = :error")
        params["error"] = error
    for name, value in counters.items():
        if name not in ("new_messages", "duplicates", "failed", "chunks_embedded"):
            raise ValueError(f"unknown window counter {name}")
        sets.append(f"{name} = :{name}")
        params[name] = value
    session.execute(text(f"UPDATE windows SET {', '.join(sets)} WHERE id = :id"), params)
    _finish_if_complete(session, window_id)


def _finish_if_complete(session: Session, window_id: int) -> None:
    # A separate statement so it sees the row as just updated (and, under concurrent updates of
    # the same row, the other transaction's committed version).
    session.execute(
        text(f"UPDATE windows SET finished = true WHERE id = :id AND NOT finished AND {_FINISHED_SQL}"),
        {"id": window_id},
    )


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")


def record_failure(
    session: Session,
    account_id: int,
    run_id: int | None,
    window_id: int | None,
    item_ref: str,
    stage: str,
    error_class: str,
    reason: str,
) -> None:
    session.execute(
        pg_insert(Failure)
        .values(
            account_id=account_id,
            run_id=run_id,
            window_id=window_id,
            item_ref=item_ref,
            stage=stage,
            error_class=error_class,
            reason=reason[:2000],
        )
        .on_conflict_do_nothing()
    )


# ---------------------------------------------------------------- progress


@dataclass(frozen=True, slots=True)
class RunProgress:
    run_id: int
    account_id: int
    status: str
    mode: str
    source: str
    reading_done: bool
    entries: int
    windows_total: int
    windows_finished: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    stage_done: dict[str, int]  # messages whose window finished the stage (done, failed or skipped)
    stage_failed_windows: dict[str, int]  # owed enrichment included
    enrichment_owed: int  # embed/insight window stages an AI outage left for the sweep (pipeline.enrichment)
    new_messages: int
    duplicates: int
    failed_messages: int
    gone_messages: int  # deleted from the source between listing and fetching
    chunks_embedded: int
    quota_units: int  # Gmail quota units the windows' fetches spent
    # Read with detail=True only (the web API's run page); empty otherwise.
    windows_by_state: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> state -> windows
    failures_by_stage: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> class -> rows


def run_progress(engine: Engine, run_id: int) -> RunProgress:
    progress = runs_progress(engine, [run_id]).get(run_id)
    if progress is None:
        raise NoResultFound(f"no sync run {run_id}")
    return progress


def runs_progress(engine: Engine, run_ids: Sequence[int]) -> dict[int, RunProgress]:
    """The progress of several runs, in one statement whatever their number (one call per run was four
    round trips each): progress_sql. One statement is one snapshot: no transaction around it."""
    with reading(engine) as conn:
        return runs_progress_in(conn, run_ids)


_STAGE_COLUMNS = ", ".join(STAGES)
_ENRICHMENT_SQL = ", ".join(f"'{st}'" for st in ENRICHMENT_STAGES)
_RESUMABLE_SQL = ", ".join(f"'{c}'" for c in RESUMABLE_CLASSES)

# How each of progress_cache.FIGURES is computed from a run's rows: the table it aggregates, and the
# aggregate (for a per-stage figure, formatted with the stage as `{st}`).
_FIGURE_SQL: dict[str, tuple[str, str]] = {
    "windows_finished": ("windows", "count(*) FILTER (WHERE finished)"),
    "stage_done": ("windows", f"coalesce(sum(size) FILTER (WHERE {{st}} IN {_TERMINAL_SQL}), 0)"),
    "stage_failed_windows": ("windows", "count(*) FILTER (WHERE {st} = 'failed')"),
    "enrichment_owed": ("failures", f"count(*) FILTER (WHERE item_ref = 'window' AND stage IN ({_ENRICHMENT_SQL}) "
                                    f"AND error_class IN ({_RESUMABLE_SQL}))"),
    "new_messages": ("windows", "coalesce(sum(new_messages), 0)"),
    "duplicates": ("windows", "coalesce(sum(duplicates), 0)"),
    # Items, not rows: one message may have failed at several stages.
    "failed_messages": ("failures", "count(DISTINCT item_ref) FILTER (WHERE item_ref <> 'window' "
                                    "AND error_class <> 'gone')"),
    "gone_messages": ("failures", "count(DISTINCT item_ref) FILTER (WHERE item_ref <> 'window' "
                                  "AND error_class = 'gone')"),
    "chunks_embedded": ("windows", "coalesce(sum(chunks_embedded), 0)"),
    "quota_units": ("windows", "coalesce(sum(quota_units), 0)"),
}


def _figures_sql() -> str:
    """A LATERAL subquery for a run `r` whose current cached list is `kept.cached`: when there is none, the
    run's figures aggregated from its windows and failures, as a list in the cache's layout (`figures`,
    progress_cache.KEYS), and its unfinished windows; no row otherwise (and neither table is read)."""
    parts: dict[str, list[str]] = {"windows": ["count(*) FILTER (WHERE NOT finished) AS unfinished"], "failures": []}
    for i, (name, st) in enumerate(progress_cache.KEYS):
        table, aggregate = _FIGURE_SQL[name]
        parts[table].append(f"{aggregate.format(st=st)} AS f{i}")
    listed = ", ".join(f"f{i}" for i in range(len(progress_cache.KEYS)))
    return (f"SELECT json_build_array({listed})::text AS figures, unfinished "
            f"FROM (SELECT {', '.join(parts['windows'])} FROM windows WHERE run_id = r.id) w, "
            f"(SELECT {', '.join(parts['failures'])} FROM failures WHERE run_id = r.id) f "
            # OFFSET 0 keeps the subquery from being pulled up into the join, where the condition
            # became a join filter applied after both aggregates had run for every run (EXPLAIN at 1M):
            # in it, the condition is checked once per run, before either table is read.
            "WHERE kept.cached IS NULL OFFSET 0")


_FIGURES_SQL = _figures_sql()

# A run's own columns that its progress shows, read as plain rows rather than SyncRun objects (`status`
# reads ~170 runs; a row is cheaper to build than an ORM object, and the progress needs no more).
RUN_COLUMNS = (SyncRun.id, SyncRun.account_id, SyncRun.status, SyncRun.mode, SyncRun.source, SyncRun.reading_done,
               SyncRun.entries, SyncRun.windows_total, SyncRun.started_at, SyncRun.finished_at, SyncRun.error)
# RunProgress's names for them, in their order. Rows are read by position: SQLAlchemy's Row resolves each
# attribute by name (~0.8 µs on this project's machines), 11 of them per run were ~1.5 ms of a `status`
# of 171 runs (ad-hoc timeit at 1M; docs/PERFORMANCE.md, ninth round).
RUN_FIELDS = ("run_id", *(c.key for c in RUN_COLUMNS[1:]))
RUN_COLUMNS_SQL = ", ".join(c.name for c in RUN_COLUMNS)
# After them, in a row of progress_sql: the run's current cached list, the list aggregated now (when
# there was none), its unfinished windows (with it), and the statement's snapshot (pg_snapshot's text);
# then the caller's own columns.
CACHED, COMPUTED, UNFINISHED, SNAPSHOT = range(len(RUN_COLUMNS), len(RUN_COLUMNS) + 4)
_STATUS_AT = RUN_FIELDS.index("status")


def progress_sql(runs: str, *, columns: str = "", where: str = "", order: str = "",
                 use_cache: bool = True) -> TextClause:
    """A statement reading runs (`runs`, a FROM clause naming them `r`) with their progress figures, in one
    round trip whatever their number: a run's cached list when it is current (pipeline.progress_cache),
    else aggregated from its windows and failures in the same statement (a running run's took two
    statements more before: ~0.5 ms of a `status` at 1M; docs/PERFORMANCE.md, eleventh round). One
    statement, so one snapshot, whose figures may be cached as they are (SNAPSHOT). Rows: RUN_COLUMNS,
    then CACHED, COMPUTED, UNFINISHED and SNAPSHOT, then `columns`; for figures_of."""
    kept = progress_cache.CURRENT_SQL if use_cache else "SELECT NULL::text AS cached"
    statement = text(
        f"SELECT {', '.join('r.' + c.name for c in RUN_COLUMNS)}, kept.cached, agg.figures, agg.unfinished, "
        f"pg_current_snapshot()::text{', ' + columns if columns else ''} "
        f"FROM {runs} LEFT JOIN LATERAL ({kept}) kept ON true LEFT JOIN LATERAL ({_FIGURES_SQL}) agg ON true "
        f"{where} {order}")
    return statement.bindparams(layout=progress_cache.LAYOUT) if use_cache else statement


# One array parameter, not IN with a parameter per run: with hundreds of runs an expanded IN made each
# statement's text (and its parsing, on both sides) grow with them.
_RUNS_BY_ID = progress_sql("sync_runs r", where="WHERE r.id = ANY(:run_ids)")
_RUNS_BY_ID_AGGREGATED = progress_sql("sync_runs r", where="WHERE r.id = ANY(:run_ids)", use_cache=False)


def runs_progress_in(s: Session | Connection, run_ids: Sequence[int], *,
                     detail: bool = False) -> dict[int, RunProgress]:
    """runs_progress in the caller's transaction (the web API's run page reads more in the same one).

    `detail` also fills windows_by_state and failures_by_stage (two statements more), and aggregates the
    figures from the rows in the same snapshot rather than reading them cached: the run page's parts agree."""
    ids = list(dict.fromkeys(int(r) for r in run_ids))
    if not ids:
        return {}
    # Plain SQL on the session's connection: through the Session, the ORM's execution path was a quarter
    # of the run page's time in process (py-spy at 1M), for statements that load no object.
    conn = s.connection() if isinstance(s, Session) else s
    runs = conn.execute(_RUNS_BY_ID_AGGREGATED if detail else _RUNS_BY_ID, {"run_ids": ids}).all()
    return progress_of(conn, runs, detail=detail).progress


@dataclass(frozen=True, slots=True)
class FiguresRead:
    figures: dict[int, dict[str, Any]]  # run id -> progress_cache.FIGURES
    # Runs whose figures were aggregated by this read and that were finished in its snapshot (not queued or
    # running, every window finished), and that snapshot: for progress_cache.store.
    cacheable: dict[int, dict[str, Any]]
    snapshot: str | None


def figures_of(runs: Sequence[Any]) -> FiguresRead:
    """The figures of runs read by one progress_sql statement (a row without a run, None first, is skipped)."""
    figures: dict[int, dict[str, Any]] = {}
    cacheable: dict[int, dict[str, Any]] = {}
    for run in runs:
        if run[0] is None:
            continue
        computed = run[COMPUTED]
        got = progress_cache.figures_from(run[CACHED] if computed is None else computed)
        if got is None:  # CURRENT_SQL reads only lists of the layout's slots, and the statement writes them
            raise ValueError(f"run {run[0]}: progress figures not a list of {len(progress_cache.SLOTS)}")
        figures[run[0]] = got
        if computed is not None and run[_STATUS_AT] not in (QUEUED, RUNNING) and run[UNFINISHED] == 0:
            cacheable[run[0]] = got
    return FiguresRead(figures, cacheable, runs[0][SNAPSHOT] if cacheable else None)


# GROUPING(ingest, ..., insight) has a bit set for each stage column a row is not grouped by: all of them
# but the one whose windows the row counts in one state.
_BY_STATE = text(
    f"SELECT run_id, GROUPING({_STAGE_COLUMNS}), {_STAGE_COLUMNS}, count(*) FROM windows WHERE run_id = ANY(:ids) "
    f"GROUP BY GROUPING SETS ({', '.join(f'(run_id, {st})' for st in STAGES)})")
_BY_CLASS = text("SELECT run_id, stage, error_class, count(*) FROM failures WHERE run_id = ANY(:ids) "
                 "GROUP BY run_id, stage, error_class")


def _breakdowns(conn: Connection, ids: list[int]) -> tuple[dict[int, dict[str, dict[str, int]]],
                                                             dict[int, dict[str, dict[str, int]]]]:
    """Per run: each stage's windows by state, and its failure rows by stage and class."""
    n_stages = len(STAGES)
    by_state: dict[int, dict[str, dict[str, int]]] = {}
    for row in conn.execute(_BY_STATE, {"ids": ids}):
        run_id, grouping = int(row[0]), int(row[1])
        for i, stage in enumerate(STAGES):
            if not grouping & (1 << (n_stages - 1 - i)):  # the stage this row counts windows of
                by_state.setdefault(run_id, {}).setdefault(stage, {})[row[2 + i]] = int(row[2 + n_stages])
    by_stage: dict[int, dict[str, dict[str, int]]] = {}
    for run_id, stage, error_class, n in conn.execute(_BY_CLASS, {"ids": ids}):
        by_stage.setdefault(int(run_id), {}).setdefault(stage, {})[error_class] = int(n)
    return by_state, by_stage


@dataclass(frozen=True, slots=True)
class ProgressRead:
    progress: dict[int, RunProgress]
    cacheable: dict[int, dict[str, Any]]  # as in FiguresRead
    snapshot: str | None


def progress_of(conn: Connection, runs: Sequence[Any], *, detail: bool = False) -> ProgressRead:
    """The progress of runs read by one progress_sql statement; with `detail`, their windows by state and
    failures by class too (two statements whatever their number)."""
    read = figures_of(runs)
    by_state, by_stage = _breakdowns(conn, list(read.figures)) if detail and read.figures else ({}, {})
    progress = {run[0]: _progress(run, read.figures[run[0]], by_state.get(run[0]), by_stage.get(run[0]))
                for run in runs}
    return ProgressRead(progress, read.cacheable, read.snapshot)


def _progress(run: Any, figures: dict[str, Any], windows_by_state: dict[str, dict[str, int]] | None = None,
              failures_by_stage: dict[str, dict[str, int]] | None = None) -> RunProgress:
    """A run's progress from its row (RUN_COLUMNS first) and its figures (progress_cache.FIGURES)."""
    return RunProgress(**dict(zip(RUN_FIELDS, run, strict=False)), **figures,
                       windows_by_state=windows_by_state or {}, failures_by_stage=failures_by_stage or {})


__all__ = [
    "QUEUED",
    "ProgressRead",
    "RunProgress",
    "StageClaim",
    "abandon_run",
    "add_window",
    "adopt_queued_run",
    "begin_run",
    "claim_stage",
    "complete_stage",
    "downstream_of",
    "end_reading",
    "ensure_account",
    "fail_stage",
    "heartbeat",
    "maybe_finish_run",
    "remember_progress",
    "open_window_ids",
    "window_backlog",
    "queue_run",
    "settle_claim",
    "record_failure",
    "run_progress",
    "CACHED",
    "COMPUTED",
    "FiguresRead",
    "SNAPSHOT",
    "UNFINISHED",
    "figures_of",
    "progress_sql",
    "RUN_COLUMNS_SQL",
    "RUN_COLUMNS",
    "RUN_FIELDS",
    "progress_of",
    "runs_progress",
    "runs_progress_in",
    "skip_stage",
    "stalled_windows",
    "touch_windows",
]
