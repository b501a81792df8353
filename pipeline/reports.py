"""Read models for the CLI and the web API: status and operations, runs, contacts, insights, threads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Integer, bindparam, select, true

from pipeline import progress_cache
from pipeline.accounts import reauth_advice
from pipeline.contacts import rank_now
from pipeline.counts import KINDS, counts_by_account
from pipeline.errors import BadInputError, NotFoundError
from pipeline.metrics import Snapshot, as_status
from pipeline.progress_cache import FIGURES
from pipeline.runs import CACHED, RUN_COLUMNS, RUN_FIELDS, RunProgress, progress_of, runs_progress_in
from pipeline.storage.db import snapshot, transaction
from pipeline.storage.models import (
    Account,
    Contact,
    SyncRun,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def resolve_account(engine: Engine, email: str | None) -> tuple[int, str]:
    """The account named, or the only one there is."""
    with transaction(engine) as s:
        if email:
            row = s.execute(select(Account.id, Account.email).where(Account.email == email.lower())).first()
            if row is None:
                raise BadInputError(f"no account {email!r}; see `mailpipe status` for the accounts")
            return int(row[0]), str(row[1])
        rows = s.execute(select(Account.id, Account.email).order_by(Account.id).limit(2)).all()
    if not rows:
        raise BadInputError("no account yet; import a mailbox first: mailpipe import PATH")
    if len(rows) > 1:
        raise BadInputError("several accounts; pass --account EMAIL")
    return int(rows[0][0]), str(rows[0][1])


# Built once: building the LATERAL anew took ~0.4 ms of every status (ad-hoc, at 1M).
_LATEST = (select(*RUN_COLUMNS).where(SyncRun.account_id == Account.id).order_by(SyncRun.started_at.desc())
           .limit(bindparam("recent_runs", type_=Integer)).lateral())
_LATEST_RUNS = (select(*_LATEST.c, progress_cache.cached_figures(_LATEST.c.id)).select_from(Account)
                .join(_LATEST, true()).order_by(_LATEST.c.account_id, _LATEST.c.started_at.desc()))
_COUNTS = counts_by_account()
_ACCOUNTS = (select(Account.id, Account.email, Account.kind, Account.status, Account.status_reason,
                    Account.history_id, Account.last_synced_at, *(_COUNTS.c[kind] for kind in KINDS))
             .outerjoin(_COUNTS, _COUNTS.c.account_id == Account.id).order_by(Account.id))


def status(engine: Engine, recent_runs: int = 3) -> list[dict[str, Any]]:
    """Per account: its counts and its latest runs. Two statements whatever the number of accounts and
    runs (one per account and count, and four per run, before: 1,900 round trips for 100 accounts;
    docs/PERFORMANCE.md, db-scale): the accounts with their counts (the sums of their count deltas,
    `pipeline.counts`: `count(*)` walked 2.7M index entries at 1M messages), and their latest runs
    with the cached figures of those finished (`pipeline.progress_cache`). Runs without current figures
    take two more (their windows and failures), and the finished ones among them are then cached."""
    with snapshot(engine) as s:  # one snapshot: the counts and the runs' progress agree
        conn = s.connection()  # plain rows: the Session's ORM execution path is for objects
        accounts = conn.execute(_ACCOUNTS).all()
        runs = conn.execute(_LATEST_RUNS, {"recent_runs": recent_runs}).all()
        # A run with current cached figures is shown from its row and them, without a RunProgress: ~15 µs
        # a run against 34 through one, for the ~166 cached of `status` at 1M (docs/PERFORMANCE.md, tenth round).
        shown = {run[0]: _entry(run, figures) for run in runs
                 if (figures := progress_cache.figures_from(run[CACHED])) is not None}
        read = progress_of(conn, [run for run in runs if run[0] not in shown])
        snap = progress_cache.snapshot_of(conn) if read.cacheable else None
    if snap is not None:
        progress_cache.store(engine, snap, read.cacheable)
    shown.update((run_id, _run_dict(p)) for run_id, p in read.progress.items())
    run_ids: dict[int, list[int]] = {}
    for run in runs:  # by position (RUN_COLUMNS: id, account_id, ...): see pipeline.runs.RUN_FIELDS
        run_ids.setdefault(int(run[1]), []).append(int(run[0]))
    out: list[dict[str, Any]] = []
    for row in accounts:
        a = row._mapping  # by key: a Row's attributes are looked up by name, ~0.8 µs each
        out.append({
            "email": a["email"],
            "kind": a["kind"],
            "status": a["status"],
            # What the user has to do, when the account waits on them (e.g. reconnect).
            "action": reauth_advice(a["email"], a["status_reason"]) if a["status"] == "needs_reauth" else None,
            "history_id": a["history_id"],
            "last_synced_at": _iso(a["last_synced_at"]),
            **{kind: a[kind] or 0 for kind in KINDS},
            "runs": [shown[rid] for rid in run_ids.get(a["id"], []) if rid in shown],
        })
    return out


def run_detail(engine: Engine, run_id: int, account_id: int) -> dict[str, Any]:
    """One run of the account, for the web API: progress per stage (messages, and windows by state),
    failures by class (and by stage). Another account's run is NotFoundError, like a missing one."""
    with snapshot(engine) as s:  # its three statements see one snapshot: a page whose parts agree
        progress = runs_progress_in(s, [run_id], detail=True).get(run_id)
    if progress is None or progress.account_id != account_id:
        raise NotFoundError("no such run")
    out = _run_dict(progress)
    by_class: dict[str, int] = {}
    for classes in progress.failures_by_stage.values():
        for error_class, n in classes.items():
            by_class[error_class] = by_class.get(error_class, 0) + n
    for stage, entry in out["stages"].items():
        entry["windows"] = progress.windows_by_state.get(stage, {})
    out["windows_open"] = max(out["windows"] - out["windows_finished"], 0)
    out["failures"] = {"total": sum(by_class.values()), "by_class": by_class,
                       "by_stage": progress.failures_by_stage}
    return out


def operations(snap: Snapshot) -> dict[str, Any]:
    """The operational picture for `mailpipe status`: breakers, queues, workers, quota, paused accounts,
    recent failures by class, stuck runs (a part that could not be read is None, and named in `unreadable`)."""
    breakers = [
        {"name": b.name, "state": b.state, "failures": b.failures, "opened_at": _iso(b.opened_at),
         "retry_after": round(b.retry_after, 1)}
        for b in snap.breakers or []
    ]
    return {"breakers": breakers, **as_status(snap)}


def _run_dict(p: RunProgress) -> dict[str, Any]:
    return _entry(tuple(getattr(p, name) for name in RUN_FIELDS), {name: getattr(p, name) for name in FIGURES})


def _entry(run: Sequence[Any], f: Mapping[str, Any]) -> dict[str, Any]:
    """A run as `status` and the web API show it, from its row (RUN_COLUMNS' values first, in RUN_FIELDS'
    order: test_progress_cache checks it) and its figures (progress_cache.FIGURES)."""
    run_id, _, status, mode, source, reading_done, entries, windows_total, started_at, finished_at, error = (
        run[:CACHED])
    failed_windows = f["stage_failed_windows"]
    return {
        "run_id": run_id, "mode": mode, "status": status, "source": source,
        "entries": entries, "windows": windows_total, "windows_finished": f["windows_finished"],
        "stages": {stage: {"messages_done": done, "failed_windows": failed_windows[stage]}
                   for stage, done in f["stage_done"].items()},
        "reading_done": reading_done, "enrichment_owed": f["enrichment_owed"],
        "new_messages": f["new_messages"], "duplicates": f["duplicates"], "failed": f["failed_messages"],
        "gone": f["gone_messages"], "quota_units": f["quota_units"], "chunks_embedded": f["chunks_embedded"],
        "started_at": _iso(started_at), "finished_at": _iso(finished_at), "error": error,
    }


@dataclass(frozen=True, slots=True)
class ContactRow:
    email: str
    name: str
    company: str | None
    sent: int
    received: int
    threads: int
    first_seen: str | None
    last_seen: str | None
    rank: float

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies field by field, 4.7 ms of a 50-contact API page's ~6.
        return {"email": self.email, "name": self.name, "company": self.company, "sent": self.sent,
                "received": self.received, "threads": self.threads, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "rank": self.rank}


# The columns a contact's row shows, read as plain rows: a whole Contact object also brings its names
# array and the ORM's per-object state, none of which a row shows. (Not timed on its own: see
# docs/PERFORMANCE.md, the web API's third round, for the page before and after.)
CONTACT_COLUMNS = (Contact.id, Contact.email, Contact.name, Contact.company, Contact.sent_count,
                   Contact.received_count, Contact.thread_count, Contact.first_seen, Contact.last_seen,
                   Contact.rank_log, Contact.rank_key)


def top_contacts(engine: Engine, account_id: int, limit: int, half_life_days: float) -> list[ContactRow]:
    now = datetime.now(UTC)
    with transaction(engine) as s:
        rows = s.execute(
            select(*CONTACT_COLUMNS).where(Contact.account_id == account_id, Contact.rank_key.is_not(None))
            .order_by(Contact.rank_key.desc(), Contact.id).limit(limit)
        ).all()
    return [contact_row(c, now, half_life_days) for c in rows]


def contact_row(c: Any, now: datetime, half_life_days: float) -> ContactRow:
    """A contact, or a row of CONTACT_COLUMNS, as shown."""
    return ContactRow(
        email=c.email, name=c.name, company=c.company, sent=c.sent_count, received=c.received_count,
        threads=c.thread_count, first_seen=_iso(c.first_seen), last_seen=_iso(c.last_seen),
        rank=round(rank_now(c.rank_log, c.sent_count > 0 and c.received_count > 0, now, half_life_days), 4),
    )


def as_dicts(rows: list[ContactRow]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in rows]
