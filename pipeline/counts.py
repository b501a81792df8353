"""Per-account counts for `mailpipe status`: messages, threads holding mail, contacts, embedding chunks,
insights and failures, read from `account_count_deltas` instead of counted.

Triggers (migration 0012) write a delta in the same transaction as every insert or delete of a counted
row, one row per (account, kind, transaction), so the sums equal `count(*)` in any snapshot, whoever
wrote the rows, and concurrent writers never share a counter row. Here:

- `stored_counts`: the sums; `BY_ACCOUNT_SQL` the same sums as a row per account, joined to the
  accounts `status` reads (a few delta rows per account and kind once compacted).
- `compact`: folds committed rows into one per account and kind (rows written since the last fold are
  what `status` sums beyond that), dropping the rows of accounts deleted since.
- `verify`: compares the sums with `count(*)` in one snapshot and writes the difference as a correcting
  row (a trigger dropped by hand, a load with triggers off): the counts are right again and the drift
  is reported.

Both take one advisory lock, so two of them never fold or correct the same rows twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

# kind -> (table, the rows counted). The triggers of migration 0012 count the same rows.
COUNTED: dict[str, tuple[str, str]] = {
    "messages": ("messages", "true"),
    "threads": ("threads", "message_count > 0"),
    "contacts": ("contacts", "true"),
    "chunks": ("embedding_chunks", "true"),
    "insights": ("insights", "true"),
    "failures": ("failures", "true"),
}
KINDS = tuple(COUNTED)
COUNTS_LOCK = 7_240_012  # advisory lock id of compact and verify (env.py's migration lock is 7_240_001)

_XACT = "pg_current_xact_id()::text::bigint"  # this transaction's id: its own delta row

Counts = dict[tuple[int, str], int]  # (account id, kind) -> count


_SUMS_SQL = "SELECT account_id, kind, sum(delta) AS n FROM account_count_deltas GROUP BY account_id, kind"


def stored_counts(db: Session | Connection) -> Counts:
    rows = db.execute(text(_SUMS_SQL))
    return {(int(a), str(k)): int(n) for a, k, n in rows}


# The stored counts as one row per account (`account_id`) and a column per kind (KINDS; NULL for a kind
# never counted), to join to a query of accounts: `status` reads its accounts and their counts in one
# statement, with one pass over the delta rows and no row per account and kind (~600 at 100 accounts) or
# JSON to decode.
BY_ACCOUNT_SQL = ("SELECT account_id, " + ", ".join(
    f"sum(delta) FILTER (WHERE kind = '{kind}')::bigint AS {kind}" for kind in KINDS
) + " FROM account_count_deltas GROUP BY account_id")


def actual_counts(db: Session | Connection) -> Counts:
    """`count(*)` of every kind per account: what the stored counts must equal (expensive at scale)."""
    rows = db.execute(text(" UNION ALL ".join(
        f"SELECT account_id, '{kind}', count(*) FROM {table} WHERE {where} GROUP BY account_id"
        for kind, (table, where) in COUNTED.items()
    )))
    return {(int(a), str(k)): int(n) for a, k, n in rows}


# Every count computed from rows again, as one row per account and kind: the migration's backfill, and
# what a bulk load that ran with triggers off (bench.db_scale) runs after loading.
REBUILD_SQL = (
    "DELETE FROM account_count_deltas",
    "INSERT INTO account_count_deltas (account_id, kind, xact, delta) " + " UNION ALL ".join(
        f"SELECT account_id, '{kind}', {_XACT}, count(*) FROM {table} WHERE {where} GROUP BY account_id"
        for kind, (table, where) in COUNTED.items()
    ),
)

# Folds the committed rows visible now (in-progress transactions' rows are not, and stay) into one row per
# account and kind, written under this transaction's id; an account deleted since, or a sum of zero, keeps
# none. Groups already folded are left alone, so a second pass rewrites nothing.
_COMPACT_SQL = f"""
WITH loose AS (
  SELECT account_id, kind FROM account_count_deltas GROUP BY account_id, kind
  HAVING count(*) > 1 OR sum(delta) = 0 OR account_id NOT IN (SELECT id FROM accounts)),
gone AS (
  DELETE FROM account_count_deltas d USING loose
  WHERE d.account_id = loose.account_id AND d.kind = loose.kind
  RETURNING d.account_id, d.kind, d.delta),
kept AS (
  INSERT INTO account_count_deltas (account_id, kind, xact, delta)
  SELECT account_id, kind, {_XACT}, sum(delta) FROM gone
  WHERE account_id IN (SELECT id FROM accounts)
  GROUP BY account_id, kind HAVING sum(delta) <> 0
  RETURNING 1)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM kept)
"""


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """Hold the counts' advisory lock on a connection of its own, taken before the caller's transaction
    starts (so its snapshot sees whatever the previous holder committed)."""
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": COUNTS_LOCK})
        lock.commit()
        try:
            yield
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": COUNTS_LOCK})
            lock.commit()


@dataclass(frozen=True, slots=True)
class Compaction:
    folded: int  # delta rows removed
    written: int  # rows holding their sums (one per account and kind)


def compact(engine: Engine) -> Compaction:
    """Fold the delta rows into one per account and kind; the sums do not change."""
    with _exclusive(engine), engine.begin() as conn:
        folded, written = conn.execute(text(_COMPACT_SQL)).one()
    return Compaction(int(folded), int(written))


@dataclass(frozen=True, slots=True)
class Drift:
    account_id: int
    kind: str
    stored: int  # what status would have shown
    actual: int  # count(*); what it shows now

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def verify(engine: Engine) -> list[Drift]:
    """Compare every stored count with `count(*)` and correct those that differ; the drifts found.

    One REPEATABLE READ snapshot for both sides: a writer's rows and its deltas commit together, so
    they are both in it or both not, and work going on meanwhile is never mistaken for drift. The fix
    is a row holding the difference, right whatever commits after the snapshot.
    """
    snapshot = engine.execution_options(isolation_level="REPEATABLE READ")
    with _exclusive(engine), snapshot.begin() as conn:
        accounts = set(conn.execute(text("SELECT id FROM accounts")).scalars())
        stored, actual = stored_counts(conn), actual_counts(conn)
        drifts = [Drift(a, k, stored.get((a, k), 0), actual.get((a, k), 0))
                  for a, k in sorted(stored.keys() | actual.keys())
                  if a in accounts and stored.get((a, k), 0) != actual.get((a, k), 0)]
        if drifts:
            conn.execute(
                text(f"INSERT INTO account_count_deltas (account_id, kind, xact, delta) "
                     f"VALUES (:a, :k, {_XACT}, :d)"),
                [{"a": d.account_id, "k": d.kind, "d": d.actual - d.stored} for d in drifts],
            )
    return drifts


__all__ = ["COUNTED", "KINDS", "REBUILD_SQL", "Compaction", "Counts", "Drift", "actual_counts", "compact",
           "BY_ACCOUNT_SQL", "stored_counts", "verify"]
