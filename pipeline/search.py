"""Hybrid search: pgvector nearest chunks and PostgreSQL full text, merged by reciprocal rank fusion.

Filters (sender, dates, labels) are conditions inside both candidate queries, never a pass over
their results: a selective filter applied to the 50 nearest chunks of the whole mailbox would
usually leave nothing, although matching messages exist. The vector side picks its plan by how
many messages the filters leave (counted up to EXACT_SCAN_MESSAGES + 1 through the filter indexes
of migration 0006):

- at most EXACT_SCAN_MESSAGES (EXACT_SCAN_SENDER_MESSAGES for a sender's address): an exact scan
  over those messages' chunks (no HNSW; a few microseconds per chunk, and recall is perfect);
- more: the HNSW index with pgvector's iterative scan, which keeps walking the graph until enough
  chunks pass the filter. At least EXACT_SCAN_MESSAGES matching messages means a large enough
  share of the index matches for HNSW_MAX_SCAN_TUPLES visited chunks to yield the candidates.

Why more for a sender's address: the iterative scan's cost depends on how many matches lie *near
the query*, not on how many there are, and a bulk sender's mail sits in a corner of the vector space
of its own: for a sender of 7,900 messages at 100k (GitHub notifications) the walk visited 9,500
chunks, a join to their messages for each, 0.5–1 s; the exact scan of those 7,900 chunks took
40–90 ms on the same loaded machine (docs/PERFORMANCE.md, search-latency). An address (with dates
and the account) is answered from ix_messages_from_email alone (migration 0013), so counting and
listing those messages reads no message row; labels and sender words read a row per message to
count, and keep the lower limit.

Full text is always exact: the GIN index on `tsv` and the filter indexes combine in one plan.
"""

from __future__ import annotations

import json
import os
import re
from bisect import bisect_left
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from pipeline.contacts import canonical_email
from pipeline.embeddings import Embedder
from pipeline.errors import BadInputError
from pipeline.storage.db import reading, transaction
from pipeline.storage.models import SENDER_WORDS_SQL

RRF_K = 60  # the usual constant: damps the weight of the very first ranks
CANDIDATES = 50  # per method, before fusion (more when the caller asks for more hits)
HNSW_EF_SEARCH = 100
# Chunks the iterative scan may visit before giving up (pgvector's default, stated so it is ours).
HNSW_MAX_SCAN_TUPLES = 20_000
EXACT_SCAN_MESSAGES = 2_000
EXACT_SCAN_SENDER_MESSAGES = 10_000
# An account's own chunks compared exactly when it has at most this many and a quarter of all at most
# (db-scale: 1M messages over 100 accounts, ~10k chunks each: exact p50 13 ms against a graph walk
# through the other accounts' 99%).
EXACT_SCAN_ACCOUNT_CHUNKS = 20_000
PLANNER_TRUST = 10  # a planner estimate above this many times EXACT_SCAN_MESSAGES is not counted
SNIPPET_CHARS = 300
HEADLINE_OPTIONS = "MaxWords=35, MinWords=15, MaxFragments=1, StartSel=«, StopSel=»"


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """What a hit must satisfy besides matching the query. Empty fields filter nothing."""

    sender: str | None = None  # a full address: that sender exactly; else words starting the name's or address's
    after: datetime | None = None  # sent at or after (inclusive)
    before: datetime | None = None  # sent before (exclusive)
    labels: tuple[str, ...] = ()  # every one of these labels

    @property
    def active(self) -> bool:
        return bool(self.sender or self.after or self.before or self.labels)


def parse_day(value: str, option: str) -> datetime:
    """`YYYY-MM-DD` (midnight UTC) or an ISO 8601 date-time (UTC unless it says otherwise)."""
    value = value.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(f"{option} {value!r}: not a date; use YYYY-MM-DD (or an ISO 8601 date-time)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def make_filters(sender: str | None = None, after: str | None = None, before: str | None = None,
                 labels: list[str] | tuple[str, ...] = ()) -> SearchFilters:
    """Filters from command-line strings; BadInputError on anything unusable."""
    start = parse_day(after, "--after") if after else None
    end = parse_day(before, "--before") if before else None
    if start and end and start >= end:
        raise BadInputError(f"--after {after} is not before --before {before}: no message can match")
    sender = sender.strip() if sender else None
    if sender == "":
        raise BadInputError("--from needs an address or a name")
    if sender and not _looks_like_address(sender):
        sender_words_query(sender)  # refused now, before anything starts, when it holds no word
    clean_labels = tuple(dict.fromkeys(lb.strip() for lb in labels if lb.strip()))
    return SearchFilters(sender=sender, after=start, before=end, labels=clean_labels)


@dataclass(frozen=True, slots=True)
class Hit:
    message_id: str
    thread_id: int | None
    subject: str
    from_: str
    date: str | None
    score: float
    snippet: str
    matched: str  # "vector", "text" or "both": which candidate lists held the message
    labels: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("from_")
        return d


def search(engine: Engine, query: str, *, account_id: int | None, limit: int = 10,
           embedder: Embedder | None = None, filters: SearchFilters | None = None,
           per_thread: bool = True, exact_scan_messages: int | None = None) -> list[Hit]:
    """The `limit` best messages for `query`; with `per_thread`, only the best one of each thread.

    `exact_scan_messages`: the most filtered messages whose chunks are compared exactly; above, HNSW
    (default: exact_scan_limit(filters)).
    """
    query = query.strip()
    if not query:
        return []
    filters = filters or SearchFilters()
    if exact_scan_messages is None:
        exact_scan_messages = exact_scan_limit(filters)
    where, params = _conditions(filters, account_id)
    n = max(CANDIDATES, 2 * limit)
    # The two halves side by side: the query is embedded on one core while PostgreSQL answers the full
    # text on a connection of its own; then the vectors are compared. At 1M messages each half's
    # statement takes 10-20 ms warm (db-scale): one after the other, they added up.
    with transaction(engine) as s:
        pool = _side_pool()
        pending = pool.submit(embedder.embed, [query]) if embedder is not None else None
        text_pending = pool.submit(_text_candidates_apart, engine, query, where, params, n)
        vector_ranked: list[tuple[int, int | None, str]] = []  # (message id, thread id, its best chunk)
        if embedder is not None and pending is not None:
            vector_ranked = _vector_candidates(s, lambda: str(list(pending.result()[0])), embedder.name, where,
                                               params, filters, account_id, n, exact_scan_messages)
        text_ranked = text_pending.result()  # (message id, thread id), best first
        scores: dict[int, float] = {}
        thread_of: dict[int, int | None] = {}
        for ranked in ([(mid, tid) for mid, tid, _ in vector_ranked], text_ranked):
            for rank, (mid, thread_id) in enumerate(ranked):
                scores[mid] = scores.get(mid, 0.0) + 1.0 / (RRF_K + rank + 1)
                thread_of[mid] = thread_id
        if not scores:
            return []
        chosen = _choose(scores, thread_of, limit, per_thread)
        best_chunk = {mid: chunk for mid, _, chunk in vector_ranked}
        text_set = {mid for mid, _ in text_ranked}
        rows = s.execute(
            text(
                "SELECT m.id, coalesce(m.rfc_message_id, m.message_key), m.thread_id, coalesce(m.subject, ''), "
                "coalesce(m.from_email, ''), m.sent_at, m.labels, "
                f"CASE WHEN m.id = ANY(:text_ids) THEN ts_headline('english', coalesce(m.stripped_text, ''), q, "
                f"'{HEADLINE_OPTIONS}') END "
                "FROM messages m, websearch_to_tsquery('english', :q) q WHERE m.id = ANY(:ids)"
            ),
            {"ids": chosen, "text_ids": [mid for mid in chosen if mid in text_set], "q": query},
        ).all()
    by_id = {r[0]: r for r in rows}
    hits: list[Hit] = []
    for mid in chosen:
        _, rfc, thread_id, subject, sender, sent_at, labels, headline = by_id[mid]
        in_vector, in_text = mid in best_chunk, mid in text_set
        # A full-text match shows the words it matched; a semantic one the passage of its nearest chunk.
        snippet = headline if headline else passage(best_chunk.get(mid, ""), query)
        hits.append(Hit(
            message_id=rfc, thread_id=thread_id, subject=subject, from_=sender,
            date=sent_at.isoformat() if sent_at else None, score=round(scores[mid], 5),
            snippet=" ".join(snippet.split())[: 2 * SNIPPET_CHARS],  # room for the «» marks
            matched="both" if in_vector and in_text else "vector" if in_vector else "text",
            labels=list(labels or []),
        ))
    return hits


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _side_pool() -> ThreadPoolExecutor:
    """This process's threads for a search's query embedding and full-text half, started once: a thread
    per search cost more than the rest of the Python side of a search on a loaded machine. Made again
    after a fork."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="search-side"))
    return _pool[1]


def exact_scan_limit(filters: SearchFilters) -> int:
    """The most matching messages compared exactly: more when the sender's address index answers alone."""
    by_address = bool(filters.sender) and _looks_like_address(filters.sender or "")
    return EXACT_SCAN_SENDER_MESSAGES if by_address and not filters.labels else EXACT_SCAN_MESSAGES


def _conditions(filters: SearchFilters, account_id: int | None) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions on `messages m` and their parameters."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if account_id is not None:
        where.append("m.account_id = :acct")
        params["acct"] = account_id
    if filters.sender:
        exact = canonical_email(filters.sender) if _looks_like_address(filters.sender) else None
        if exact:
            where.append("m.from_email = :from_exact")  # stored canonical, so compared canonical
            params["from_exact"] = exact
        else:
            # Served by the GIN index ix_messages_sender_words: the same expression, word by word.
            where.append(f"{SENDER_WORDS_SQL.replace('from_', 'm.from_')} @@ to_tsquery('simple', :from_words)")
            params["from_words"] = sender_words_query(filters.sender)
    if filters.after:
        where.append("m.sent_at >= :after")
        params["after"] = filters.after
    if filters.before:
        where.append("m.sent_at < :before")
        params["before"] = filters.before
    if filters.labels:
        where.append("m.labels @> CAST(:labels AS text[])")  # containment: the GIN index on labels serves it
        params["labels"] = list(filters.labels)
    return where, params


def _vector_candidates(s: Session, vector_of: Callable[[], str], model: str, where: list[str],
                       params: dict[str, Any], filters: SearchFilters, account_id: int | None, n: int,
                       exact_limit: int) -> list[tuple[int, int | None, str]]:
    """Messages by their nearest chunk, best first, each with its thread and that chunk's text.

    `vector_of()` gives the query's vector (a pgvector literal), asked for only once it is needed."""
    matching = _matching_messages(s, where, params, exact_limit) if filters.active else None
    if matching == 0:
        return []
    # The vector goes as an untyped literal (psycopg's default for a str), so CAST(:v AS vector) types the
    # parameter itself and it is parsed once. Bound as text it would be parsed per chunk under a generic
    # plan (psycopg prepares a statement after 5 runs): 687 ms against 16 for an account's exact scan at
    # 1M (ad-hoc, psql).
    args = {**params, "v": vector_of(), "model": model, "n": n}
    if matching is not None:
        source = "embedding_chunks c JOIN messages m ON m.id = c.message_id"
        conditions = ["c.model = :model", *where]
        exact = matching <= exact_limit
    else:
        source = "embedding_chunks c"
        conditions = ["c.model = :model"] + (["c.account_id = :acct"] if account_id is not None else [])
        # An account holding a small share of the chunks: comparing its own chunks exactly beats
        # walking the graph through everyone else's. The planner chose so by itself until the
        # embedded server's random_page_cost (1.1) changed its sums: decided here, not by them.
        exact = account_id is not None and _small_account(s, account_id)
    if exact:
        # The materialized CTE keeps the planner from ordering through the HNSW index, which
        # would drop whatever the filter rejects among its first ef_search chunks.
        rows = s.execute(
            text(
                f"WITH c AS MATERIALIZED (SELECT c.id, c.embedding <=> CAST(:v AS vector) AS d FROM {source} "
                f"WHERE {' AND '.join(conditions)}) "
                "SELECT ch.message_id, mt.thread_id, ch.text FROM (SELECT id, d FROM c ORDER BY d LIMIT :n) best "
                "JOIN embedding_chunks ch ON ch.id = best.id JOIN messages mt ON mt.id = ch.message_id "
                "ORDER BY best.d"
            ),
            args,
        ).all()
        return _per_message(rows)
    _iterative_hnsw(s)
    rows = s.execute(
        text(
            # relaxed_order may return chunks slightly out of order: the outer ORDER BY restores it.
            f"WITH nn AS MATERIALIZED (SELECT c.message_id, c.text, c.embedding <=> CAST(:v AS vector) AS d "
            f"FROM {source} WHERE {' AND '.join(conditions)} "
            "ORDER BY c.embedding <=> CAST(:v AS vector) LIMIT :n) "
            "SELECT nn.message_id, mt.thread_id, nn.text FROM nn JOIN messages mt ON mt.id = nn.message_id "
            "ORDER BY nn.d"
        ),
        args,
    ).all()
    return _per_message(rows)


def _matching_messages(s: Session, where: list[str], params: dict[str, Any], exact_limit: int) -> int:
    """How many messages pass the filters, counted exactly up to exact_limit + 1.

    Counting reads a heap row per match, so a filter the planner expects to match far more than the
    limit (Inbox, a year: tens of thousands) is taken at its word: those rows are what the HNSW
    iterative scan is for, and even a tenfold overestimate leaves it plenty of matches to find.
    """
    condition = " AND ".join(where)
    estimate = _estimated_rows(s, f"SELECT 1 FROM messages m WHERE {condition}", params)
    if estimate > PLANNER_TRUST * exact_limit:
        return int(estimate)
    return int(s.execute(
        text(f"SELECT count(*) FROM (SELECT 1 FROM messages m WHERE {condition} LIMIT :cap) f"),
        {**params, "cap": exact_limit + 1},
    ).scalar_one())


def _small_account(s: Session, account_id: int) -> bool:
    """Whether the account holds at most EXACT_SCAN_ACCOUNT_CHUNKS chunks and at most a quarter of all.

    A large share is what the graph walk is good at: few of the chunks it visits are rejected. Both
    from the planner's statistics: counting the account's chunks on every search read up to 20k index
    entries, most of a small search's time, to settle a choice that needs only the share's size."""
    own = _estimated_rows(s, "SELECT 1 FROM embedding_chunks WHERE account_id = :acct", {"acct": account_id})
    total = float(s.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'embedding_chunks'::regclass"))
                  .scalar_one())  # -1 until the table is first analyzed: then not small
    return own <= EXACT_SCAN_ACCOUNT_CHUNKS and total >= 4 * own


def _estimated_rows(s: Session, select_sql: str, params: dict[str, Any]) -> float:
    """The planner's estimate of the rows `select_sql` returns (no row is read)."""
    plan = s.execute(text(f"EXPLAIN (FORMAT JSON) {select_sql}"), params).scalar_one()
    return float((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]["Plan Rows"])


def _iterative_hnsw(s: Session) -> None:
    # Iterative scan also matters without user filters: chunks of another model (a re-embed in
    # progress) or another account fill the first ef_search results and would be dropped.
    s.execute(text(  # one round trip; is_local=true is SET LOCAL: the transaction's end undoes them
        f"SELECT set_config('hnsw.ef_search', '{HNSW_EF_SEARCH}', true), "
        "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        f"set_config('hnsw.max_scan_tuples', '{HNSW_MAX_SCAN_TUPLES}', true)"
    ))


def _per_message(rows: Any) -> list[tuple[int, int | None, str]]:
    seen: dict[int, tuple[int, int | None, str]] = {}
    for mid, thread_id, chunk in rows:
        seen.setdefault(mid, (mid, thread_id, chunk))  # rows are nearest first: the first chunk is the best one
    return list(seen.values())


def _text_candidates_apart(engine: Engine, query: str, where: list[str], params: dict[str, Any],
                           n: int) -> list[tuple[int, int | None]]:
    """_text_candidates on a connection of its own (a statement needs no transaction around it)."""
    with reading(engine) as conn:
        return _text_candidates(conn, query, where, params, n)


def _text_candidates(s: Session | Connection, query: str, where: list[str], params: dict[str, Any],
                     n: int) -> list[tuple[int, int | None]]:
    """Full-text matches, best first, each with its thread."""
    conditions = " AND ".join(["m.tsv @@ q", *where])
    return [(int(mid), thread_id) for mid, thread_id in s.execute(
        text(
            "SELECT m.id, m.thread_id FROM messages m, websearch_to_tsquery('english', :q) q "
            f"WHERE {conditions} ORDER BY ts_rank_cd(m.tsv, q) DESC, m.id LIMIT :n"
        ),
        {**params, "q": query, "n": n},
    )]


def _choose(scores: dict[int, float], threads: dict[int, int | None], limit: int, per_thread: bool) -> list[int]:
    """Message ids by fused score; with `per_thread`, the best message of each thread only (the threads
    come with the candidates: asking for them was a round trip of its own)."""
    ranked = sorted(scores, key=lambda mid: (-scores[mid], mid))
    if not per_thread:
        return ranked[:limit]
    chosen: list[int] = []
    seen: set[Any] = set()
    for mid in ranked:
        key = threads.get(mid) or f"m{mid}"  # not threaded yet: a thread of its own
        if key not in seen:
            seen.add(key)
            chosen.append(mid)
            if len(chosen) == limit:
                break
    return chosen


_WORD = re.compile(r"\w{3,}", re.UNICODE)


def passage(chunk: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """The `width` characters of a chunk's body around the most query words, those words marked «».

    The chunk's "Subject:/From:" prefix is dropped: the hit shows both already.
    """
    if chunk.startswith("Subject:"):
        chunk = chunk.split("\n", 2)[2] if chunk.count("\n") >= 2 else ""
    body = " ".join(chunk.split())
    terms = {w.lower() for w in _WORD.findall(query)}
    if not body or not terms:
        return body[:width]
    starts = [m.start() for m in _WORD.finditer(body) if _matches(m.group().lower(), terms)]
    begin = 0
    if starts:
        # The window [s, s + width) holding the most matched words, started a little before the first.
        # starts is ascending: the words in [st, st + width) are those up to bisect's index.
        best = max(range(len(starts)), key=lambda i: bisect_left(starts, starts[i] + width) - i)
        best = starts[best]
        begin = max(0, best - 40)
        begin = body.rfind(" ", 0, begin) + 1 if begin else 0
    window = body[begin:begin + width]
    return _WORD.sub(lambda m: f"«{m.group()}»" if _matches(m.group().lower(), terms) else m.group(), window)


def _matches(word: str, terms: set[str]) -> bool:
    # Prefix either way, a crude stand-in for stemming: "invoices" ~ "invoice", "pay" ~ "payment".
    return any(word.startswith(t) or (len(word) >= 4 and t.startswith(word)) for t in terms)


def _looks_like_address(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and local and "." in domain and " " not in value)


def sender_words_query(value: str) -> str:
    """`--from` words as a tsquery: every word must start a word of the sender's name or address."""
    words = _SENDER_WORD.findall(value.lower())
    if not words:
        raise BadInputError(f"--from {value!r}: give an address, or letters or digits of a name or address")
    return " & ".join(f"{w}:*" for w in words)


_SENDER_WORD = re.compile(r"[^\W_]+", re.UNICODE)  # the words translate() and the parser leave in the index
