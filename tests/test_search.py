"""Search: filters inside both candidate queries, one hit per thread, snippets. Real Postgres, real MiniLM.

The mailbox is imported once per module, through the pipeline's own stages, into a database of its
own (the `engine` fixture empties tables per test; these tests only read).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from pipeline.embeddings.chunking import load_tokenizer
from pipeline.embeddings.local import LocalEmbedder
from pipeline.errors import BadInputError
from pipeline.records import RawMessage
from pipeline.runs import StageClaim, add_window, begin_run, end_reading, ensure_account
from pipeline.search import Hit, SearchFilters, make_filters, passage, search
from pipeline.settings import Settings
from pipeline.stages.embed import EmbeddingTools, embed_pending
from pipeline.stages.ingest import ingest_window
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import run_stage
from pipeline.storage.db import engine_for, migrate

ROOT = Path(__file__).resolve().parents[1]
DESK = "desk@travel.example"
BOOKINGS = 150  # more near-identical hits than HNSW's ef_search (100) returns without iterating
FILLER = " ".join(
    f"Section {i}: the quarterly planning review covers headcount, vendor renewals and the roadmap for "
    "the analytics platform, with owners and dates agreed in the last steering meeting." for i in range(14)
)


def _raw(mid: str, sender: str, subject: str, body: str, date: str, labels: str = "Inbox",
         reply_to: str | None = None) -> bytes:
    head = [f"From: {sender}", "To: me@example.com", f"Subject: {subject}", f"Message-ID: <{mid}>",
            f"Date: {date}", f"X-Gmail-Labels: {labels}"]
    if reply_to:
        head += [f"In-Reply-To: <{reply_to}>", f"References: <{reply_to}>"]
    return ("\n".join(head) + "\n\n" + body + "\n").encode()


def _mailbox() -> list[bytes]:
    raws = [
        _raw(f"booking{i}@travel.example", f"Travel Desk <{DESK}>", "Flight to Lisbon",
             f"Your flight to Lisbon is confirmed, booking reference LX{i:03d}, seat {i % 30 + 1}C.",
             f"Mon, {i % 28 + 1:02d} Aug 2022 09:00:00 +0000", "Inbox,Travel")
        for i in range(BOOKINGS)
    ]
    raws += [
        # Jane's trip never says "flight" or "Lisbon": only the vector half can find it.
        _raw("jane1@gmail.com", "Jane Doe <jane.doe+work@gmail.com>", "Weekend plans",
             "My plane to the Portuguese capital takes off Tuesday morning; I land at Humberto Delgado "
             "airport around noon.", "Fri, 10 Mar 2023 18:00:00 +0000", "Inbox,Personal"),
        _raw("inv1@globex.com", "Bob Billing <bob@globex.com>", "Invoice INV-2023-0042",
             "Please find attached invoice INV-2023-0042 for April, total 1,200 EUR.",
             "Mon, 01 May 2023 10:00:00 +0000", "Inbox,Finance/Invoices"),
        _raw("inv2@example.com", "Me <me@example.com>", "Re: Invoice INV-2023-0042",
             "Thanks Bob, the invoice is approved and will be paid on Friday.",
             "Tue, 02 May 2023 00:00:00 +0000", "Sent,Finance/Invoices", reply_to="inv1@globex.com"),
        _raw("inv3@globex.com", "Bob Billing <bob@globex.com>", "Re: Invoice INV-2023-0042",
             "Great, payment of the invoice received. Thank you!", "Wed, 03 May 2023 08:00:00 +0000",
             "Inbox,Finance/Invoices", reply_to="inv2@example.com"),
        _raw("long1@initech.io", "Carol Smith <carol@initech.io>", "Notes from the offsite",
             FILLER + " The espresso machine on the third floor is broken again; facilities will replace "
             "its pump on Friday. " + FILLER, "Thu, 15 Jun 2023 12:00:00 +0000", "Inbox"),
        _raw("deal1@shop.example", "100% Deals <deals@shop.example>", "Weekly deals",
             "Half price on headphones and chargers this week only.", "Sat, 17 Jun 2023 07:00:00 +0000",
             "Inbox,Promotions"),
    ]
    return raws


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder(batch_size=16)


@pytest.fixture(scope="module")
def search_url(pg_url: str, embedder: LocalEmbedder) -> Iterator[str]:
    name = f"search_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    engine = engine_for(url)
    settings = Settings(database_url=url)
    account = ensure_account(engine, "me@example.com", ["me@example.com"])
    run = begin_run(engine, account, "import", "test", stale_seconds=60)
    raws = _mailbox()
    wid = add_window(engine, run, 0, [RawMessage(f"offset:{i}", raw) for i, raw in enumerate(raws)])
    end_reading(engine, run, len(raws), 1)
    tools = EmbeddingTools(embedder=embedder, tokenizer=load_tokenizer(embedder.model_dir))

    def embed(claim: StageClaim) -> None:
        embed_pending(engine, claim, tools)

    for stage, work, prepare in (("ingest", ingest_window, None), ("normalize", normalize_window, None),
                                 ("contacts", lambda s, c: {}, None), ("embed", lambda s, c: {}, embed)):
        assert run_stage(engine, settings, wid, stage, work, prepare=prepare).outcome == "done", stage
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages WHERE embedded_at IS NULL")).scalar() == 0
    yield url
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def db(search_url: str) -> Engine:
    return engine_for(search_url)


def _ids(hits: list[Hit]) -> list[str]:
    return [h.message_id for h in hits]


def test_a_selective_sender_filter_finds_what_unfiltered_candidates_miss(db: Engine, embedder: LocalEmbedder) -> None:
    query = "flight to Lisbon"
    unfiltered = search(db, query, account_id=None, limit=50, embedder=embedder, per_thread=False)
    # The setup is meaningful: the desk's bookings fill every candidate slot, Jane's trip is not among them.
    assert "jane1@gmail.com" not in _ids(unfiltered) and len(unfiltered) == 50
    jane = SearchFilters(sender="jane")
    for exact_scan in (5000, 0):  # exact scan over the filtered set; HNSW iterative scan
        hits = search(db, query, account_id=None, embedder=embedder, filters=jane, exact_scan_messages=exact_scan)
        assert _ids(hits) == ["jane1@gmail.com"], exact_scan
        assert hits[0].matched == "vector"  # no query word is in it: found by meaning, under the filter
        assert "Portuguese capital" in hits[0].snippet


def test_the_hnsw_path_really_walks_the_index_under_a_filter(search_url: str, db: Engine,
                                                             embedder: LocalEmbedder) -> None:
    # Sequential scans and sorts off: the vector query must be served by the HNSW index, iterating past the
    # 150 bookings that the filter rejects (ef_search is 100) to reach Jane's chunk.
    forced = create_engine(search_url, connect_args={"options": "-c enable_seqscan=off -c enable_sort=off"})
    with db.connect() as conn:
        before = _hnsw_scans(conn)
    hits = search(forced, "flight to Lisbon", account_id=None, embedder=embedder,
                  filters=SearchFilters(after=datetime(2023, 1, 1, tzinfo=UTC), labels=("Personal",)),
                  exact_scan_messages=0)
    assert _ids(hits) == ["jane1@gmail.com"]
    forced.dispose()  # a backend reports its statistics when it exits (else when idle for a while)
    deadline = time.monotonic() + 30
    with db.connect() as conn:
        while _hnsw_scans(conn) == before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _hnsw_scans(conn) > before


def _hnsw_scans(conn: Connection) -> int:
    conn.execute(text("SELECT pg_stat_clear_snapshot()"))  # else a transaction keeps reading its first snapshot
    return int(conn.execute(text(
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'ix_embedding_chunks_embedding_hnsw'"
    )).scalar_one())


def test_sender_filter_exact_address_or_words_of_name_and_address(db: Engine, embedder: LocalEmbedder) -> None:
    def senders(sender: str, query: str = "invoice") -> set[str]:
        hits = search(db, query, account_id=None, limit=50, embedder=embedder, per_thread=False,
                      filters=SearchFilters(sender=sender))
        return {h.from_ for h in hits}

    # An exact address is compared canonically: Gmail's dots and +tag are the same mailbox.
    assert senders("Jane.Doe+work@gmail.com", "plans") == {"janedoe@gmail.com"}
    assert senders("bob@globex.com") == {"bob@globex.com"}
    assert senders("BILLING") == {"bob@globex.com"}  # a word of the name, any case
    assert senders("bil") == {"bob@globex.com"}  # the start of a word is enough
    assert senders("illing") == set()  # but words are matched from their start (an index serves it)
    assert senders("@globex") == {"bob@globex.com"}  # a word of the address
    assert senders("jane doe", "plans") == {"janedoe@gmail.com"}  # every word must match
    assert senders("jane smith", "plans") == set()
    assert senders("100", "deals") == {"deals@shop.example"}
    assert senders("nobody@nowhere.example") == set()
    with pytest.raises(BadInputError, match="letters or digits"):
        make_filters(sender="%")


def test_dates_after_inclusive_before_exclusive(db: Engine, embedder: LocalEmbedder) -> None:
    invoices = {"inv1@globex.com", "inv2@example.com", "inv3@globex.com"}

    def found(after: str | None, before: str | None) -> set[str]:
        filters = make_filters(after=after, before=before)
        hits = search(db, "invoice INV-2023-0042", account_id=None, limit=50, embedder=embedder,
                      per_thread=False, filters=filters)
        for h in hits:  # whatever else the vector half brings is inside the range too
            assert h.date is not None
            when = datetime.fromisoformat(h.date)
            assert filters.after is None or when >= filters.after
            assert filters.before is None or when < filters.before
        return set(_ids(hits)) & invoices

    assert found(None, None) == invoices
    assert found("2023-05-02", None) == {"inv2@example.com", "inv3@globex.com"}  # midnight itself is in
    assert found(None, "2023-05-02") == {"inv1@globex.com"}
    assert found("2023-05-02", "2023-05-03") == {"inv2@example.com"}
    assert found("2024-01-01", None) == set()


def test_bad_dates_and_empty_filters_are_refused() -> None:
    with pytest.raises(BadInputError, match="--after '2023-13-01': not a date"):
        make_filters(after="2023-13-01")
    with pytest.raises(BadInputError, match="--before 'yesterday'"):
        make_filters(before="yesterday")
    with pytest.raises(BadInputError, match="no message can match"):
        make_filters(after="2023-06-01", before="2023-05-01")
    with pytest.raises(BadInputError, match="--from needs"):
        make_filters(sender="  ")
    f = make_filters(after="2023-05-02T08:00:00+02:00", labels=["Travel", " Travel ", ""])
    assert f.after == datetime(2023, 5, 2, 6, tzinfo=UTC) and f.labels == ("Travel",)


def test_the_command_exits_2_on_a_bad_date_before_starting_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env["MAILPIPE_HOME"] = str(tmp_path / "home")
    result = subprocess.run([sys.executable, "-m", "tasks.cli", "search", "invoice", "--before", "2023-02-30"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--before '2023-02-30': not a date" in result.stderr
    assert not (tmp_path / "home").exists()  # refused before the embedded database was started


def test_label_filter_needs_every_label(db: Engine, embedder: LocalEmbedder) -> None:
    def found(*labels: str) -> set[str]:
        hits = search(db, "invoice payment", account_id=None, embedder=embedder, per_thread=False,
                      filters=SearchFilters(labels=labels))
        return set(_ids(hits))

    assert found("Finance/Invoices") == {"inv1@globex.com", "inv2@example.com", "inv3@globex.com"}
    assert found("Finance/Invoices", "Sent") == {"inv2@example.com"}
    assert found("finance/invoices") == set()  # labels are exact names, as Gmail shows them
    travel = search(db, "invoice payment", account_id=None, embedder=embedder,
                    filters=SearchFilters(labels=("Travel",)))
    assert travel and all("Travel" in h.labels for h in travel)


def test_one_hit_per_thread_unless_all_messages(db: Engine, embedder: LocalEmbedder) -> None:
    per_thread = search(db, "invoice INV-2023-0042 payment", account_id=None, embedder=embedder,
                        filters=SearchFilters(labels=("Finance/Invoices",)))
    assert len(per_thread) == 1
    every = search(db, "invoice INV-2023-0042 payment", account_id=None, embedder=embedder,
                   filters=SearchFilters(labels=("Finance/Invoices",)), per_thread=False)
    assert len(every) == 3 and len({h.thread_id for h in every}) == 1
    assert per_thread[0].message_id == every[0].message_id  # the thread's hit is its best message
    assert [h.score for h in every] == sorted((h.score for h in every), reverse=True)


def test_snippets_show_the_matched_passage(db: Engine, embedder: LocalEmbedder) -> None:
    [text_hit] = search(db, "payment received", account_id=None, embedder=embedder, per_thread=False,
                        filters=SearchFilters(sender="bob@globex.com", after=datetime(2023, 5, 3, tzinfo=UTC)))
    assert text_hit.matched == "both"
    assert "«payment»" in text_hit.snippet and "«received»" in text_hit.snippet  # ts_headline's marks
    # A long message: the snippet is the chunk nearest the query, not the message's first chunk.
    [vector_hit] = search(db, "coffee maker repair", account_id=None, embedder=embedder,
                          filters=SearchFilters(sender="carol"))
    assert vector_hit.matched == "vector"
    with db.connect() as conn:
        chunks = conn.execute(text(
            "SELECT c.text FROM embedding_chunks c JOIN messages m ON m.id = c.message_id "
            "WHERE m.rfc_message_id = 'long1@initech.io' ORDER BY c.chunk_index")).scalars().all()
    [espresso] = [c for c in chunks if "espresso machine" in c]
    assert len(chunks) >= 3 and espresso != chunks[0]
    assert vector_hit.snippet == " ".join(passage(espresso, "coffee maker repair").split())
    assert not vector_hit.snippet.startswith("Subject:")


def test_passage_picks_the_window_with_most_query_words() -> None:
    chunk = "Subject: s\nFrom: f\n" + "lorem ipsum " * 60 + "the invoices were paid in March " + "dolor " * 60
    snippet = passage(chunk, "invoice paid")
    assert "«invoices» were «paid»" in snippet
    assert not snippet.startswith("Subject") and len(snippet) <= 300 + 4 * 2
    assert passage("Subject: s\nFrom: f\nshort body", "unrelated") == "short body"


def test_a_senders_address_is_scanned_exactly_further_than_other_filters() -> None:
    """An address is answered by its covering index (migration 0013); labels and words read rows."""
    from pipeline.search import EXACT_SCAN_MESSAGES, EXACT_SCAN_SENDER_MESSAGES, exact_scan_limit

    assert EXACT_SCAN_SENDER_MESSAGES > EXACT_SCAN_MESSAGES
    assert exact_scan_limit(SearchFilters(sender="jane@example.com")) == EXACT_SCAN_SENDER_MESSAGES
    assert exact_scan_limit(SearchFilters(sender="jane@example.com", after=datetime(2024, 1, 1, tzinfo=UTC))) \
        == EXACT_SCAN_SENDER_MESSAGES
    assert exact_scan_limit(SearchFilters(sender="jane")) == EXACT_SCAN_MESSAGES
    assert exact_scan_limit(SearchFilters(sender="jane@example.com", labels=("Inbox",))) == EXACT_SCAN_MESSAGES
    assert exact_scan_limit(SearchFilters(labels=("Inbox",))) == EXACT_SCAN_MESSAGES


def test_search_takes_the_exact_scan_for_an_address_above_the_general_limit(
        db: Engine, embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the general limit below the desk's 150 bookings, its address still gets the exact scan;
    the same sender by a word of its name takes the HNSW walk."""
    from sqlalchemy import event

    import pipeline.search as search_module

    monkeypatch.setattr(search_module, "EXACT_SCAN_MESSAGES", 10)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db, "before_cursor_execute", seen)
    try:
        plans = {}
        for sender in (DESK, "travel"):
            statements.clear()
            hits = search(db, "flight to Lisbon", account_id=None, embedder=embedder,
                          filters=SearchFilters(sender=sender))
            assert hits and all(h.from_ == DESK for h in hits), sender
            plans[sender] = ("exact" if any("WITH c AS MATERIALIZED" in st for st in statements) else
                             "hnsw" if any("hnsw.iterative_scan" in st for st in statements) else "?")
    finally:
        event.remove(db, "before_cursor_execute", seen)
    assert plans == {DESK: "exact", "travel": "hnsw"}
