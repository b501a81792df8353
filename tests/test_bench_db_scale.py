"""bench/db_scale.py at a tiny size: the data it loads, the figures it writes, and its sequential-scan
detector (which must flag a planted sequential scan, or the bench's "no seq scan" would prove nothing)."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from bench import db_scale
from bench.db_scale import Case, explain_statements, measure, seq_scans


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's 0700 temp tree: the server runs as its own system user when we are root.
    folder = Path(tempfile.mkdtemp(prefix="mailpipe-test-dbscale-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_tiny_scenario_loads_every_table_and_reports_every_query(data_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    report = data_dir / "PERFORMANCE.md"
    report.write_text("# Performance\n")
    code = db_scale.main(["--messages", "2000", "--accounts", "3", "--reps", "3", "--warmup", "1",
                          "--explain-reps", "1", "--budget", "5", "--data", str(data_dir / "db"),
                          "--report", str(report), "--json"])
    assert code in (0, 1)  # 1: a target missed or a seq scan (tables this small are read whole)
    out = json.loads(capsys.readouterr().out)

    rows = out["load"]["rows"]
    assert rows["accounts"] == 3
    assert 1_800 <= rows["messages"] <= 2_000  # duplicates, failed items and a running run's unfetched mail
    assert rows["window_items"] == 2_000
    for table in ("sync_runs", "windows", "threads", "contacts", "message_participants", "contact_threads",
                  "embedding_chunks", "insights", "failures"):
        assert rows[table] > 0, table
    assert rows["embedding_chunks"] >= rows["messages"] * 0.5

    results = {r["name"]: r for r in out["results"]}
    assert {"mailpipe status (every account)", "run progress", "claim a window's stage",
            "enrichment sweep: owed (all accounts)", "contacts page (top 20)", "a thread", "search",
            "search --from address"} <= set(results)
    # The cases that write are measured last: their deletes and stores are not left to the others.
    assert [r["name"] for r in out["results"][-2:]] == ["upgrade: every finished run's progress cached",
                                                        "mailpipe status, progress not cached"]
    assert [r["target_ms"] for r in out["results"][-2:]] == [None, None]  # context: no target
    for r in results.values():
        assert r["reps"] >= 3 and 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"], r
        assert r["statements"] >= 1 and r["explained"] == 1, r
        assert r["key_node"], r
    assert out["pg_stat_statements"] in (True, False)
    assert out["top_statements"]

    text_md = report.read_text()
    assert "<!-- bench:db-scale:start -->" in text_md and "<!-- bench:db-scale-top-statements:end -->" in text_md
    # The exact command: the options given that differ from their defaults are in it.
    assert "--reps 3 --explain-reps 1 --warmup 1 --budget 5.0 --data DIR`" in text_md
    assert "| search | `search.search` |" in text_md
    assert "| upgrade: every finished run's progress cached | `runs.fill_progress_cache` |" in text_md
    assert 'Rows whose target reads "context" have none: upgrade: every' in text_md
    assert "python -m bench.db_scale --messages 2000 --accounts 3" in text_md


def test_the_data_holds_pending_work_for_every_pending_work_query(data_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.counts import actual_counts, stored_counts
    from pipeline.enrichment import owed_enrichment
    from pipeline.runs import stalled_windows, window_backlog
    from pipeline.storage.db import engine_for

    # Windows are stamped relative to db_scale.NOW, fixed when the module is imported: in a long suite that
    # was more than STALL_SECONDS before this test, and every open window looked stalled.
    monkeypatch.setattr(db_scale, "NOW", datetime.now(UTC).replace(microsecond=0))
    spec = db_scale.LoadSpec(messages=1_500, accounts=3, seed=2, window_size=100)
    url, _ = db_scale.prepare(data_dir / "db", spec, lambda _: None, hnsw_memory="256MB", hnsw_workers=0)
    engine = engine_for(url)
    fx = db_scale.fixture(engine, 1)
    assert len(fx.running_runs) == 1 and len(fx.open_windows) == 4  # account 0: a run going, four windows open
    run = fx.running_runs[0]
    assert window_backlog(engine, run).open == 4
    assert len(stalled_windows(engine, run, db_scale.STALL_SECONDS)) == 1
    owed = owed_enrichment(engine)
    assert owed and {o.error_class for o in owed} <= {"transient", "rate_limit", "quota"}
    assert fx.owed_accounts == [2]  # account index 1
    assert fx.probes and all(len(p.vector) == 384 for p in fx.probes)
    with engine.connect() as conn:
        # Contacts' counters agree with their participant rows, as the contacts stage keeps them.
        wrong = conn.execute(text(
            "SELECT count(*) FROM contacts c WHERE received_count <> (SELECT count(*) FROM message_participants p "
            "WHERE p.contact_id = c.id AND p.role = 'from' AND p.direction = 'received')")).scalar_one()
        assert wrong == 0
        assert conn.execute(text("SELECT count(DISTINCT model) FROM embedding_chunks")).scalar_one() == 1
        # The load ran with triggers off: the per-account counts of `mailpipe status` were computed after it.
        assert stored_counts(conn) == actual_counts(conn) and len(actual_counts(conn)) >= 3 * 5

    # "status, progress not cached" starts each call from an empty cache with no dead rows behind it:
    # the table is vacuumed (its emptied pages truncated), not left to autovacuum.
    from pipeline.reports import status
    status(engine)
    cache_rows = "SELECT count(*) FROM run_progress_cache"
    with engine.connect() as conn:
        assert conn.execute(text(cache_rows)).scalar_one() > 0
    db_scale.forget_cached_progress(engine)
    with engine.connect() as conn:
        assert conn.execute(text(cache_rows)).scalar_one() == 0
        assert conn.execute(text("SELECT pg_relation_size('run_progress_cache')")).scalar_one() == 0
    engine.dispose()


def test_the_detector_flags_a_planted_seq_scan_and_not_an_index_lookup(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (email) VALUES ('me@example.com')"))

    def planted(_: random.Random) -> object:
        with engine.begin() as conn:
            return conn.execute(text("SELECT count(*) FROM messages WHERE coalesce(subject, '') LIKE :p"),
                                {"p": "%invoice%"}).scalar()

    result, explained = measure(engine, Case("planted", "test", 10.0, planted), reps=2, explain_reps=1, warmup=0,
                                budget_s=5, seed=1)
    assert result.seq_scans and result.seq_scans[0].startswith("messages (SELECT count(*) FROM messages")
    assert not result.met
    assert [e.plan is not None for e in explained] == [True]

    def lookup(_: random.Random) -> object:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            return conn.execute(text("SELECT id FROM messages WHERE id = :id"), {"id": 1}).all()

    result, explained = measure(engine, Case("lookup", "test", 10.0, lookup), reps=2, explain_reps=1, warmup=0,
                                budget_s=5, seed=1)
    assert result.seq_scans == []
    assert "pk_messages" in result.key_node
    assert explained[0].plan is None and explained[0].note.startswith("SET")  # replayed, not explained


def test_seq_scans_walks_nested_plans_and_only_counts_large_tables() -> None:
    plan = {"Plan": {"Node Type": "Nested Loop", "Plans": [
        {"Node Type": "Seq Scan", "Relation Name": "accounts"},
        {"Node Type": "Hash", "Plans": [{"Node Type": "Seq Scan", "Relation Name": "window_items",
                                         "Parallel Aware": True}]},
        {"Node Type": "Index Scan", "Relation Name": "messages", "Index Name": "pk_messages"},
    ]}}
    assert seq_scans(plan) == ["window_items"]
    assert seq_scans(plan, tables=("accounts",)) == ["accounts"]


def test_explained_writes_are_rolled_back(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (email) VALUES ('me@example.com')"))
    explained = explain_statements(engine, [("UPDATE accounts SET status = %(s)s", {"s": "paused"})])
    assert explained[0].plan is not None and explained[0].plan["Plan"]["Node Type"] == "ModifyTable"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM accounts")).scalar_one() == "active"
