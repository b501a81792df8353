"""Read models for the CLI and the web API: status and operations, runs, contacts, insights, threads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from pipeline import progress_cache
from pipeline.accounts import reauth_advice
from pipeline.contacts import rank_now
from pipeline.counts import BY_ACCOUNT_SQL, KINDS
from pipeline.errors import BadInputError, NotFoundError
from pipeline.metrics import Snapshot, as_status
from pipeline.progress_cache import FIGURES
from pipeline.runs import (
    CACHED,
    RUN_COLUMNS_SQL,
    RUN_FIELDS,
    SNAPSHOT,
    RunProgress,
    figures_of,
    progress_sql,
    runs_progress_in,
)
from pipeline.storage.db import reading, snapshot, transaction
from pipeline.storage.models import (
    Account,
    Contact,
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


# An account's own columns that `status` reads, then its counts (pipeline.counts).
_ACCOUNT_COLUMNS = ("id", "email", "kind", "status", "status_reason", "history_id", "last_synced_at")
_ACCOUNT_FIELDS = (*_ACCOUNT_COLUMNS, *KINDS)
_ACCOUNT = SNAPSHOT + 1  # where they start in a row of _STATUS, after the run's (pipeline.runs.progress_sql)
# Every account with its counts and its latest runs with their figures, a row per run (or one without a
# run): one statement, so one snapshot in which the counts and the runs' progress agree, with no
# transaction around it (its BEGIN and COMMIT, and a statement for the accounts, were ~1 ms of a `status`
# at 1M; docs/PERFORMANCE.md, eleventh round).
_STATUS = progress_sql(
    f"accounts a LEFT JOIN ({BY_ACCOUNT_SQL}) counts ON counts.account_id = a.id "
    f"LEFT JOIN LATERAL (SELECT {RUN_COLUMNS_SQL} FROM sync_runs WHERE account_id = a.id "
    "ORDER BY started_at DESC LIMIT :recent_runs) r ON true",
    columns=", ".join([*(f"a.{name}" for name in _ACCOUNT_COLUMNS), *(f"counts.{kind}" for kind in KINDS)]),
    order="ORDER BY a.id, r.started_at DESC")


def status(engine: Engine, recent_runs: int = 3) -> list[dict[str, Any]]:
    """Per account: its counts and its latest runs, in one statement whatever the number of accounts and
    runs (one per account and count, and four per run, before: 1,900 round trips for 100 accounts;
    docs/PERFORMANCE.md, db-scale). The counts are the sums of the accounts' count deltas
    (`pipeline.counts`: `count(*)` walked 2.7M index entries at 1M messages); the runs' figures are
    cached, or aggregated in the same statement (`pipeline.runs.progress_sql`). The finished runs among
    those aggregated are then cached (`pipeline.progress_cache`)."""
    with reading(engine) as conn:
        rows = conn.execute(_STATUS, {"recent_runs": recent_runs}).all()
    read = figures_of(rows)
    if read.snapshot is not None:
        progress_cache.store(engine, read.snapshot, read.cacheable)
    out: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    account = None
    for row in rows:
        if row[_ACCOUNT] != account:  # rows come by account, then its runs latest first
            a = dict(zip(_ACCOUNT_FIELDS, row[_ACCOUNT:], strict=True))
            account, runs = a["id"], []
            out.append({
                "email": a["email"],
                "kind": a["kind"],
                "status": a["status"],
                # What the user has to do, when the account waits on them (e.g. reconnect).
                "action": reauth_advice(a["email"], a["status_reason"]) if a["status"] == "needs_reauth" else None,
                "history_id": a["history_id"],
                "last_synced_at": _iso(a["last_synced_at"]),
                **{kind: a[kind] or 0 for kind in KINDS},
                "runs": runs,
            })
        if row[0] is not None:
            # From the run's row and its figures, without a RunProgress: ~15 µs a run against 34 through
            # one, for the ~171 runs of `status` at 1M (docs/PERFORMANCE.md, tenth round).
            runs.append(_entry(row, read.figures[row[0]]))
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
