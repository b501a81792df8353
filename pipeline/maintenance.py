"""Periodic upkeep, run by beat (tasks/maintenance.py): the stuck-run watchdog, retention of finished run
bookkeeping, and reconciliation of stored counters with the rows they count.

- Watchdog: a run's driver (the process streaming its source) re-sends windows whose task was lost and
  closes the run. When the driver itself is gone (its process vanished from this host, or no heartbeat
  for `watchdog_stale_seconds`), nobody would: a run still reading can never finish and is abandoned
  with the reason (the next sync or import resumes: saved windows are re-listed and skipped); a run whose
  reading was over is finished here instead (its lost windows sent again, as its driver would) and
  abandoned only after `run_abandon_seconds`. A queued run whose sync task never started it (the task was
  lost with a worker) is abandoned after `sync_queued_stale_seconds`, with the reason (the account's
  next trigger would do the same; this makes it visible without one).
- Retention: finished runs older than `retention_days` go with their windows, window items and failure
  records; window items (a row per message per run) go earlier, after `window_items_retention_days`.
  Never mail: messages do not depend on runs. Each account's latest run, and any run with enrichment
  still owed (the sweep re-opens those windows from their items), are kept.
  Retention also folds the per-account count deltas (`pipeline.counts.compact`): `mailpipe status` sums
  what was written since the previous fold, so that stays an hour's worth.
- Reconciliation: contacts' counts, dates and rank, threads' counts and dates, windows' ingest counters
  and runs' totals are recomputed from rows; only rows that differ are rewritten. Each fix first locks
  the rows with SKIP LOCKED, so a stage updating one right now is never waited for (no deadlock with
  its own lock order) and its increment lands after our recount, on top of it. Then the per-account
  counts of `mailpipe status` are checked against `count(*)` (`pipeline.counts.verify`: a drift is
  corrected and reported) and their deltas folded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from pipeline.changes import recount_contacts
from pipeline.counts import compact, verify
from pipeline.enrichment import ENRICHMENT_STAGES, RESUMABLE_CLASSES
from pipeline.resilience.quota import IDLE_EXPIRY_SECONDS
from pipeline.runs import abandon_run, driver_is_dead, maybe_finish_run, stalled_windows, touch_windows
from pipeline.settings import Settings
from pipeline.stages.normalize import refresh_threads
from pipeline.storage.db import transaction

log = logging.getLogger(__name__)

Dispatch = Callable[[int], None]  # sends a window's chain again (tasks.chains.dispatch_window)

DAY = 86_400.0
BATCH = 500  # rows fixed or deleted per transaction: short locks, bounded memory


def stall_seconds(settings: Settings) -> float:
    """How long a window may sit unchanged before its task counts as lost: what every driver uses."""
    return settings.stage_time_limit + 60


# ---------------------------------------------------------------- watchdog


@dataclass(frozen=True, slots=True)
class StuckRun:
    """A running run that is not moving: its driver is gone, or some of its windows sat idle too long."""

    run_id: int
    account_id: int
    account: str
    mode: str
    driver: str | None
    reading_done: bool
    silent_seconds: float  # since the driver's last heartbeat
    driver_gone: bool
    open_windows: int
    stalled_windows: int  # open windows unchanged for longer than a stage's hard limit

    @property
    def reason(self) -> str:
        if self.driver_gone:
            where = "while reading" if not self.reading_done else f"with {self.open_windows} window(s) open"
            return f"driver {self.driver or '?'} gone {where} ({self.silent_seconds:.0f} s without a heartbeat)"
        return f"{self.stalled_windows} window(s) idle for longer than a stage may run"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "silent_seconds": round(self.silent_seconds, 1), "reason": self.reason}


def stuck_runs(engine: Engine, settings: Settings) -> list[StuckRun]:
    """Running runs whose driver is presumed dead or that have windows stalled; by run id."""
    with transaction(engine) as s:
        rows = s.execute(
            text(
                "SELECT r.id, r.account_id, a.email, r.mode, r.driver, r.reading_done, "
                "extract(epoch FROM now() - r.heartbeat_at)::float8, count(w.id), "
                "count(w.id) FILTER (WHERE w.updated_at < now() - make_interval(secs => :stall)) "
                "FROM sync_runs r JOIN accounts a ON a.id = r.account_id "
                "LEFT JOIN windows w ON w.run_id = r.id AND NOT w.finished "
                "WHERE r.status = 'running' GROUP BY r.id, a.email ORDER BY r.id"
            ),
            {"stall": stall_seconds(settings)},
        ).all()
    out = []
    for run_id, account_id, email, mode, driver, reading_done, silent, open_, stalled in rows:
        gone = float(silent) > settings.watchdog_stale_seconds or driver_is_dead(driver)
        if gone or stalled:
            out.append(StuckRun(int(run_id), int(account_id), str(email), str(mode), driver, bool(reading_done),
                                float(silent), gone, int(open_), int(stalled)))
    return out


@dataclass(slots=True)
class WatchdogReport:
    abandoned: list[tuple[int, str]] = field(default_factory=list)  # (run id, reason)
    finished: list[int] = field(default_factory=list)
    redispatched: dict[int, list[int]] = field(default_factory=dict)  # run id -> windows sent again
    queued_abandoned: list[int] = field(default_factory=list)  # accounts whose queued run was presumed lost

    def as_dict(self) -> dict[str, object]:
        return {"abandoned": [list(a) for a in self.abandoned], "finished": self.finished,
                "redispatched": {str(k): v for k, v in self.redispatched.items()},
                "queued_abandoned": self.queued_abandoned}


def watchdog(engine: Engine, settings: Settings, dispatch: Dispatch) -> WatchdogReport:
    """Take over runs whose driver is gone (see the module docstring), and forget lost sync requests."""
    report = WatchdogReport()
    for run in stuck_runs(engine, settings):
        if not run.driver_gone:
            continue  # a live driver re-sends its own stalled windows
        if not run.reading_done:
            reason = (f"watchdog: its driver {run.driver or '?'} stopped while reading ({run.silent_seconds:.0f} s "
                      "without a heartbeat); the next sync or import resumes where it stopped")
            abandon_run(engine, run.run_id, reason)
            report.abandoned.append((run.run_id, reason))
            continue
        if run.open_windows == 0:
            if maybe_finish_run(engine, run.run_id):
                report.finished.append(run.run_id)
            continue
        if run.silent_seconds > settings.run_abandon_seconds:
            reason = (f"watchdog: its driver {run.driver or '?'} stopped {run.silent_seconds / 3600:.1f} h ago and "
                      f"{run.open_windows} window(s) never finished")
            abandon_run(engine, run.run_id, reason)
            report.abandoned.append((run.run_id, reason))
            continue
        lost = stalled_windows(engine, run.run_id, stall_seconds(settings))
        if lost:
            touch_windows(engine, lost)  # first, as the driver does: the next pass waits a full stall again
            for window_id in lost:
                dispatch(window_id)
            report.redispatched[run.run_id] = lost
    report.queued_abandoned = abandon_lost_queued_runs(engine, settings.sync_queued_stale_seconds)
    if report.abandoned or report.finished or report.redispatched or report.queued_abandoned:
        log.warning("watchdog: %s", report.as_dict())
    return report


def abandon_lost_queued_runs(engine: Engine, stale_seconds: float) -> list[int]:
    """Accounts whose queued run no sync task has touched for `stale_seconds` (its task was lost): the
    run is abandoned with the reason. (A sync waiting for a running one keeps its queued run fresh.)"""
    with transaction(engine) as s:
        rows = s.execute(
            text("UPDATE sync_runs SET status = 'abandoned', finished_at = now(), error = 'watchdog: no sync "
                 "task started it within ' || CAST(:stale AS int) || ' s (its task was lost)' "
                 "WHERE status = 'queued' AND heartbeat_at < now() - make_interval(secs => :stale) "
                 "RETURNING account_id"),
            {"stale": stale_seconds},
        ).scalars()
        return sorted(int(r) for r in rows)


# ---------------------------------------------------------------- retention

# A window whose embed or insight stage an outage left owed: the enrichment sweep re-opens it and the
# stage reads the window's items again, so neither the items nor the run may go.
_OWED = (
    "EXISTS (SELECT 1 FROM failures f WHERE f.window_id = w.id AND f.item_ref = 'window' "
    "AND f.stage = ANY(:stages) AND f.error_class = ANY(:classes))"
)


@dataclass(slots=True)
class RetentionReport:
    runs_deleted: int = 0
    windows_deleted: int = 0
    window_items_deleted: int = 0
    failures_deleted: int = 0
    quota_buckets_deleted: int = 0
    run_changes_deleted: int = 0  # change rows (pipeline.progress_cache) of runs that no longer exist
    count_deltas_folded: int = 0  # per-account count rows folded into their sums

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def retention(engine: Engine, settings: Settings) -> RetentionReport:
    """Delete run bookkeeping past its retention (see the module docstring). Never touches messages."""
    report = RetentionReport()
    owed = {"stages": list(ENRICHMENT_STAGES), "classes": list(RESUMABLE_CLASSES)}
    while True:
        with transaction(engine) as s:
            deleted = s.execute(
                text(
                    "DELETE FROM window_items WHERE (window_id, position) IN ("
                    " SELECT wi.window_id, wi.position FROM window_items wi JOIN windows w ON w.id = wi.window_id"
                    " JOIN sync_runs r ON r.id = w.run_id WHERE r.status <> 'running'"
                    " AND r.finished_at < now() - make_interval(secs => :age) AND NOT " + _OWED +
                    " LIMIT :batch)"
                ),
                {"age": settings.window_items_retention_days * DAY, "batch": BATCH * 20, **owed},
            ).rowcount  # type: ignore[attr-defined]
        report.window_items_deleted += int(deleted)
        if deleted < BATCH * 20:
            break
    while True:
        with transaction(engine) as s:
            runs = s.execute(
                text(
                    "SELECT r.id FROM sync_runs r WHERE r.status <> 'running' "
                    "AND r.finished_at < now() - make_interval(secs => :age) "
                    "AND r.id <> (SELECT max(l.id) FROM sync_runs l WHERE l.account_id = r.account_id) "
                    "AND NOT EXISTS (SELECT 1 FROM windows w WHERE w.run_id = r.id AND " + _OWED + ") "
                    "ORDER BY r.id LIMIT :batch FOR UPDATE SKIP LOCKED"
                ),
                {"age": settings.retention_days * DAY, "batch": BATCH, **owed},
            ).scalars().all()
            if not runs:
                break
            ids = {"ids": list(runs)}
            windows, items = s.execute(text(
                "SELECT count(DISTINCT w.id), count(wi.window_id) FROM windows w "
                "LEFT JOIN window_items wi ON wi.window_id = w.id WHERE w.run_id = ANY(:ids)"), ids).one()
            failures = s.execute(text("SELECT count(*) FROM failures WHERE run_id = ANY(:ids)"), ids).scalar_one()
            # Windows, their items and the failures go with the run (ON DELETE CASCADE).
            s.execute(text("DELETE FROM sync_runs WHERE id = ANY(:ids)"), ids)
        report.runs_deleted += len(runs)
        report.windows_deleted += int(windows)
        report.window_items_deleted += int(items)
        report.failures_deleted += int(failures)
    with transaction(engine) as s:
        # The PostgreSQL quota buckets (no Redis): idle ones, as Redis expires its own after the same idle time.
        report.quota_buckets_deleted = int(s.execute(
            text("DELETE FROM quota_buckets WHERE updated_at < extract(epoch FROM now()) - :idle "
                 "AND paused_until < extract(epoch FROM now())"),
            {"idle": IDLE_EXPIRY_SECONDS},
        ).rowcount)  # type: ignore[attr-defined]
        # No foreign key cascades a run's change rows (migration 0015 says why): those of runs deleted
        # above, by an account's removal, or by a writer racing a deletion, go here.
        report.run_changes_deleted = int(s.execute(text(
            "DELETE FROM run_changes c WHERE NOT EXISTS (SELECT 1 FROM sync_runs r WHERE r.id = c.run_id)"
        )).rowcount)  # type: ignore[attr-defined]
    report.count_deltas_folded = compact(engine).folded
    if any(report.as_dict().values()):
        log.info("retention: %s", report.as_dict())
    return report


# ---------------------------------------------------------------- reconciliation

_RANK_EPOCH_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"  # pipeline.contacts.RANK_EPOCH

# Contacts whose stored counts, dates or rank differ from their participant rows (pipeline.contacts: a
# message from the account counts "sent" for each participant; another's counts "received" for its sender).
_DRIFTED_CONTACTS = f"""
WITH agg AS (
  SELECT mp.contact_id,
         count(*) FILTER (WHERE mp.direction = 'sent') AS sent,
         count(*) FILTER (WHERE mp.direction = 'received' AND mp.role = 'from') AS received,
         count(DISTINCT m.thread_id) AS threads,
         min(m.sent_at) AS first_seen, max(m.sent_at) AS last_seen
  FROM message_participants mp JOIN messages m ON m.id = mp.message_id
  GROUP BY mp.contact_id),
traffic AS (
  SELECT mp.contact_id,
         ln(CASE WHEN mp.direction = 'sent' THEN 2.0 ELSE 1.0 END)::float8
         + extract(epoch FROM m.sent_at - {_RANK_EPOCH_SQL})::float8 / 86400.0 * ln(2.0)::float8 / :half_life AS x
  FROM message_participants mp JOIN messages m ON m.id = mp.message_id
  WHERE m.sent_at IS NOT NULL AND (mp.direction = 'sent' OR (mp.direction = 'received' AND mp.role = 'from'))),
rank AS (
  SELECT contact_id, hi + ln(sum(exp(greatest(x - hi, -700.0)))) AS rank_log
  FROM (SELECT contact_id, x, max(x) OVER (PARTITION BY contact_id) AS hi FROM traffic) t
  GROUP BY contact_id, hi)
SELECT c.id FROM contacts c
LEFT JOIN agg ON agg.contact_id = c.id
LEFT JOIN rank ON rank.contact_id = c.id
WHERE c.sent_count <> coalesce(agg.sent, 0) OR c.received_count <> coalesce(agg.received, 0)
   OR c.thread_count <> coalesce(agg.threads, 0)
   OR c.first_seen IS DISTINCT FROM agg.first_seen OR c.last_seen IS DISTINCT FROM agg.last_seen
   OR (c.rank_log IS NULL) <> (rank.rank_log IS NULL)
   OR abs(c.rank_log - rank.rank_log) > 1e-9 * greatest(1.0, abs(rank.rank_log))
   OR abs(c.rank_key - c.rank_log - CASE WHEN coalesce(agg.sent, 0) > 0 AND coalesce(agg.received, 0) > 0
                                         THEN ln(2.0) ELSE 0 END) > 1e-9 * greatest(1.0, abs(c.rank_log))
ORDER BY c.id
"""

_DRIFTED_THREADS = """
SELECT t.id FROM threads t
LEFT JOIN (SELECT thread_id, count(*) AS n, min(sent_at) AS first_at, max(sent_at) AS last_at
           FROM messages WHERE thread_id IS NOT NULL GROUP BY thread_id) a ON a.thread_id = t.id
WHERE t.message_count <> coalesce(a.n, 0)
   OR (a.n IS NOT NULL AND (t.first_at IS DISTINCT FROM a.first_at OR t.last_at IS DISTINCT FROM a.last_at))
ORDER BY t.id
"""

# Ingest sets a window's counters from its items' outcomes; only windows whose items are all still there.
_FIX_WINDOWS = """
UPDATE windows w SET new_messages = i.new, duplicates = i.dup, failed = i.failed
FROM (SELECT window_id, count(*) AS n, count(*) FILTER (WHERE outcome = 'new') AS new,
             count(*) FILTER (WHERE outcome = 'duplicate') AS dup, count(*) FILTER (WHERE outcome = 'failed') AS failed
      FROM window_items GROUP BY window_id) i
WHERE i.window_id = w.id AND w.ingest = 'done' AND i.n = w.size
  AND (w.new_messages <> i.new OR w.duplicates <> i.dup OR w.failed <> i.failed)
RETURNING w.id
"""

# A run's totals, written when its reading ends: every entry read went into one of its windows.
_FIX_RUNS = """
UPDATE sync_runs r SET windows_total = coalesce(a.n, 0), entries = coalesce(a.entries, 0)
FROM sync_runs r2 LEFT JOIN (SELECT run_id, count(*) AS n, sum(size) AS entries FROM windows GROUP BY run_id) a
     ON a.run_id = r2.id
WHERE r2.id = r.id AND r.reading_done
  AND (r.windows_total <> coalesce(a.n, 0) OR r.entries <> coalesce(a.entries, 0))
RETURNING r.id
"""


@dataclass(slots=True)
class ReconcileReport:
    contacts: list[int] = field(default_factory=list)  # ids rewritten
    threads: list[int] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    busy: int = 0  # drifted rows another transaction held: left for the next pass
    # Per-account counts (`mailpipe status`) that differed from count(*), now corrected: account_id,
    # kind, stored, actual.
    counts: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def reconcile(engine: Engine, settings: Settings) -> ReconcileReport:
    """Recompute stored counters from rows and rewrite the ones that drifted (see the module docstring)."""
    report = ReconcileReport()
    with transaction(engine) as s:
        contacts = [int(i) for i in s.execute(
            text(_DRIFTED_CONTACTS), {"half_life": settings.contact_half_life_days}).scalars()]
        threads = [int(i) for i in s.execute(text(_DRIFTED_THREADS)).scalars()]
    for batch in _batches(contacts):
        with transaction(engine) as s:
            locked = _lock(s, "contacts", batch)
            recount_contacts(s, locked, settings.contact_half_life_days)
        report.contacts += locked
        report.busy += len(batch) - len(locked)
    for batch in _batches(threads):
        with transaction(engine) as s:
            locked = _lock(s, "threads", batch)
            refresh_threads(s, locked)
            s.execute(text("UPDATE threads SET message_count = 0 WHERE id = ANY(:ids) AND message_count <> 0 "
                           "AND NOT EXISTS (SELECT 1 FROM messages WHERE thread_id = threads.id)"), {"ids": locked})
        report.threads += locked
        report.busy += len(batch) - len(locked)
    with transaction(engine) as s:
        report.windows = sorted(int(i) for i in s.execute(text(_FIX_WINDOWS)).scalars())
        report.runs = sorted(int(i) for i in s.execute(text(_FIX_RUNS)).scalars())
    # After the threads' fixes above, which move the count of threads holding mail through its trigger.
    report.counts = [d.as_dict() for d in verify(engine)]
    compact(engine)
    if report.contacts or report.threads or report.windows or report.runs or report.counts:
        log.warning("reconciliation repaired drifted counters: %s", report.as_dict())
    return report


def _lock(session: Session, table: str, ids: list[int]) -> list[int]:
    """Lock what nobody else holds now; the rest is being written and is looked at again next pass."""
    rows = session.execute(
        text(f"SELECT id FROM {table} WHERE id = ANY(:ids) ORDER BY id FOR UPDATE SKIP LOCKED"), {"ids": ids}
    ).scalars()
    return [int(r) for r in rows]


def _batches(ids: list[int]) -> list[list[int]]:
    return [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]


__all__ = [
    "ReconcileReport",
    "RetentionReport",
    "StuckRun",
    "WatchdogReport",
    "abandon_lost_queued_runs",
    "reconcile",
    "retention",
    "stall_seconds",
    "stuck_runs",
    "watchdog",
]
