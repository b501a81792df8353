"""Search scenarios: latency at 100k messages, and quality on a labelled query set.

    python -m bench.search --part latency --messages 100000 [--data DIR] [--report docs/PERFORMANCE.md]
    python -m bench.search --part quality --messages 2000 [--data DIR] [--report docs/PERFORMANCE.md]

Both build their database with `bench.search_load` (a generated mailbox imported by the pipeline's
own stage functions into an embedded PostgreSQL) and time `pipeline.search.search` itself, query
embedding included.

- latency: embeddings from the OpenAI-compatible endpoint (`MAILPIPE_EMBEDDER=openai`) served by
  the project's server (`pipeline.testing.openai_server`, its own process), whose vectors are
  deterministic hashes: local MiniLM would take hours for 100k messages on 2 cores. Queries are
  embedded the same way, over HTTP. p50/p95/p99 without filters and with each kind of filter.
  Target: p95 ≤ 50 ms.
- quality: local MiniLM (the default embedder) on a small mailbox; queries and the threads that
  answer them come from `bench.search_queries`. Target: recall@10 ≥ 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.report import write_section
from bench.search_load import openai_server, prepare_database
from bench.search_queries import LabelledQuery, labelled_queries, read_threads, recall_at
from pipeline.embeddings import Embedder, query_embedder_for
from pipeline.search import SearchFilters, search

LATENCY_TARGET_MS = 50.0
RECALL_TARGET = 0.8
WARMUP_QUERIES = 30


@dataclass(frozen=True, slots=True)
class Timing:
    case: str
    queries: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_hits: float
    embed_p50_ms: float  # of which the query's embedding
    search_p50_ms: float  # the same queries minus their embedding: what the database and this code take
    search_p95_ms: float
    search_p99_ms: float


class TimedEmbedder:
    """The configured embedder, unchanged, with the time and result of its last call kept."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dimensions = inner, inner.name, inner.dimensions
        self.last_ms = 0.0
        self.last: list[list[float]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        started = time.perf_counter()
        try:
            self.last = self.inner.embed(texts)
            return self.last
        finally:
            self.last_ms = (time.perf_counter() - started) * 1000


class KnownVector:
    """Answers with a vector computed before: the same search, the query's embedding taken out."""

    def __init__(self, name: str, dimensions: int, vector: list[float]) -> None:
        self.name, self.dimensions, self.vector = name, dimensions, vector

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector for _ in texts]


# ------------------------------------------------------------------------------------------ latency


def _timed(engine: Engine, embedder: TimedEmbedder, queries: list[str], filters: list[SearchFilters],
           case: str) -> tuple[Timing, list[float], list[float]]:
    """Every query once as users run it, then once more with its vector known: the case's percentiles,
    each query's milliseconds and those of its search without the embedding.

    search() embeds the query while PostgreSQL answers the full-text half, so the embedding's time
    cannot be subtracted; the second pass times the rest by itself."""
    ms: list[float] = []
    vectors: list[list[float]] = []
    embed_ms: list[float] = []
    hits = 0
    for q, f in zip(queries, filters, strict=True):
        started = time.perf_counter()
        found = search(engine, q, account_id=None, limit=10, embedder=embedder, filters=f)
        ms.append((time.perf_counter() - started) * 1000)
        vectors.append(embedder.last[0])
        embed_ms.append(embedder.last_ms)
        hits += len(found)
    search_ms: list[float] = []
    for q, f, vector in zip(queries, filters, vectors, strict=True):
        known = KnownVector(embedder.name, embedder.dimensions, vector)
        started = time.perf_counter()
        search(engine, q, account_id=None, limit=10, embedder=known, filters=f)
        search_ms.append((time.perf_counter() - started) * 1000)
    return _timing(case, ms, hits, embed_ms, search_ms), ms, search_ms


def _timing(case: str, ms: list[float], hits: int, embed_ms: list[float], search_ms: list[float]) -> Timing:
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    rest = statistics.quantiles(search_ms, n=100, method="inclusive")
    return Timing(case=case, queries=len(ms), p50_ms=round(cuts[49], 1), p95_ms=round(cuts[94], 1),
                  p99_ms=round(cuts[98], 1), mean_hits=round(hits / len(ms), 1),
                  embed_p50_ms=round(statistics.median(embed_ms), 1), search_p50_ms=round(rest[49], 1),
                  search_p95_ms=round(rest[94], 1), search_p99_ms=round(rest[98], 1))


def _filter_cases(engine: Engine, queries: list[LabelledQuery], per_case: int,
                  rng: random.Random) -> dict[str, list[SearchFilters]]:
    """Filters as a user would set them, drawn from what the mailbox holds."""
    with engine.connect() as conn:
        senders = conn.execute(text(
            "SELECT from_email, max(from_name) FROM messages WHERE NOT coalesce(from_me, false) "
            "AND from_email IS NOT NULL GROUP BY from_email ORDER BY count(*) DESC LIMIT 40")).all()
        first, last = conn.execute(text("SELECT min(sent_at), max(sent_at) FROM messages")).one()
        labels: dict[str, int] = {str(lb): int(n) for lb, n in conn.execute(text(
            "SELECT l, count(*) FROM messages, unnest(labels) l GROUP BY l"))}
    topic_label = {"invoice": "Finance/Invoices", "travel": "Travel", "hiring": "Hiring", "bug": "Work/Bugs",
                   "migration": "Work/Infra", "contract": "Legal", "launch": "Work/Marketing",
                   "support": "Support", "conference": "Conferences", "project": "Work/Projects"}
    names = [n.split()[0] for _, n in senders if n and n.split() and len(n.split()[0]) >= 3]
    span = (last - first).days

    def window(days: int) -> tuple[Any, Any]:
        start = first + timedelta(days=rng.randrange(max(1, span - days)))
        return start, start + timedelta(days=days)

    cases: dict[str, list[SearchFilters]] = defaultdict(list)
    for i in range(per_case):
        q = queries[i % len(queries)]
        cases["--from exact address"].append(SearchFilters(sender=senders[i % len(senders)][0]))
        cases["--from part of a name"].append(SearchFilters(sender=names[i % len(names)][:5].lower()))
        after, before = window(90)
        cases["--after/--before (90 days)"].append(SearchFilters(after=after, before=before))
        label = topic_label.get(q.topic, "Finance")
        cases[f"--label (topic's label, {_share(labels, label)})"].append(SearchFilters(labels=(label,)))
        after, _ = window(365)
        cases["--label Inbox --after (last year)"].append(SearchFilters(labels=("Inbox",), after=after))
    return cases


def _share(labels: dict[str, int], label: str) -> str:
    return "a few % of messages" if labels.get(label, 0) < 0.1 * max(labels.values()) else "common"


def run_latency(args: argparse.Namespace, data: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    with ExitStack() as stack:
        base_url = stack.enter_context(openai_server()) if args.embedder == "openai" else None
        engine, settings, loaded, meta = prepare_database(data, args.imported, args.seed, args.embedder, base_url, log,
                                                          scale=args.messages)
        configured = query_embedder_for(settings, engine)
        assert configured is not None
        embedder = TimedEmbedder(configured)
        queries = labelled_queries(meta, count=args.queries, seed=args.seed)
        rng = random.Random(args.seed)
        rng.shuffle(queries)
        texts = [q.query for q in queries][: args.queries]
        while len(texts) < args.queries:  # a small mailbox has fewer distinct facts than queries wanted
            texts += texts[: args.queries - len(texts)]
        log(f"{len(texts)} queries; warming up")
        load_before = os.getloadavg()[0]
        _timed(engine, embedder, texts[:WARMUP_QUERIES], [SearchFilters()] * WARMUP_QUERIES, "warm-up")
        timings = [_timed(engine, embedder, texts, [SearchFilters()] * len(texts), "no filter")[0]]
        log(_row(timings[-1]))
        pooled: list[float] = []
        pooled_embed: list[float] = []  # the pooled queries' times with their vector known
        pooled_hits = 0
        for case, filters in _filter_cases(engine, queries, max(20, args.queries // 5), rng).items():
            timing, ms, search_ms = _timed(engine, embedder, [texts[i % len(texts)] for i in range(len(filters))],
                                          filters, case)
            timings.append(timing)
            log(_row(timing))
            pooled += ms
            pooled_embed += search_ms
            pooled_hits += round(timing.mean_hits * timing.queries)
        embed_p50 = statistics.median(t.embed_p50_ms for t in timings[1:])  # pooled: the cases' median
        pooled_timing = _timing("all filtered queries above", pooled, pooled_hits, [embed_p50], pooled_embed)
        timings.append(pooled_timing)
        log(_row(timings[-1]))
    ok = all(t.p95_ms <= LATENCY_TARGET_MS for t in timings)
    ok_without_embedding = all(t.search_p95_ms <= LATENCY_TARGET_MS for t in timings)
    return {"loaded": asdict(loaded), "timings": [asdict(t) for t in timings], "target_p95_ms": LATENCY_TARGET_MS,
            "ok": ok, "ok_without_embedding": ok_without_embedding,
            "load": f"{load_before:.1f} and {os.getloadavg()[0]:.1f}"}, ok


def _row(t: Timing) -> str:
    return (f"{t.case:<45} n={t.queries:<4} p50 {t.p50_ms:>6} ms  p95 {t.p95_ms:>6} ms  p99 {t.p99_ms:>6} ms"
            f"  (embedding p50 {t.embed_p50_ms} ms; without it p50 {t.search_p50_ms} p95 {t.search_p95_ms} "
            f"p99 {t.search_p99_ms})")


# ------------------------------------------------------------------------------------------ quality


def run_quality(args: argparse.Namespace, data: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    engine, settings, loaded, meta = prepare_database(data, args.messages, args.seed, "local", None, log)
    embedder = query_embedder_for(settings, engine)
    assert embedder is not None
    queries = labelled_queries(meta, count=args.queries, seed=args.seed)
    _, thread_of = read_threads(meta)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT rfc_message_id, thread_id FROM messages WHERE rfc_message_id IS NOT NULL"))
        votes: dict[int, Counter[int]] = defaultdict(Counter)
        for rfc, thread_id in rows:
            if rfc in thread_of and thread_id is not None:
                votes[thread_id][thread_of[rfc]] += 1
    generated_thread = {tid: c.most_common(1)[0][0] for tid, c in votes.items()}
    search(engine, "warm up", account_id=None, embedder=embedder)  # loads the model
    modes: dict[str, Embedder | None] = {"hybrid": embedder, "full text only": None}
    scores: dict[str, list[float]] = {m: [] for m in modes}
    by_topic: dict[str, dict[str, list[float]]] = defaultdict(lambda: {m: [] for m in modes})
    seconds: list[float] = []
    misses: list[dict[str, Any]] = []
    for q in queries:
        for mode, emb in modes.items():
            started = time.perf_counter()
            hits = search(engine, q.query, account_id=None, limit=10, embedder=emb)
            if mode == "hybrid":
                seconds.append(time.perf_counter() - started)
            r = recall_at([generated_thread.get(h.thread_id) if h.thread_id else None for h in hits], q.threads, 10)
            scores[mode].append(r)
            by_topic[q.topic][mode].append(r)
            if mode == "hybrid" and r < 1.0:
                misses.append({"query": q.query, "recall": round(r, 2), "answering_threads": len(q.threads)})
    recall = {m: round(statistics.fmean(v), 3) for m, v in scores.items()}
    cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
    result = {
        "loaded": asdict(loaded), "queries": len(queries),
        "answering_threads_mean": round(statistics.fmean(len(q.threads) for q in queries), 2),
        "answering_messages": sum(q.messages for q in queries),
        "recall_at_10": recall,
        "by_topic": {t: {m: round(statistics.fmean(v), 3) for m, v in d.items()} | {"queries": len(d["hybrid"])}
                     for t, d in sorted(by_topic.items())},
        "latency_ms": {"p50": round(cuts[49], 1), "p95": round(cuts[94], 1)},
        "misses": misses,
        "target": RECALL_TARGET,
    }
    log(json.dumps({k: v for k, v in result.items() if k != "misses"}, indent=2))
    return result, recall["hybrid"] >= RECALL_TARGET


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["latency", "quality"], required=True)
    parser.add_argument("--messages", type=int, default=None, help="default: 100000 (latency), 2000 (quality)")
    parser.add_argument("--imported", type=int, default=2000,
                        help="latency: messages imported by the pipeline; copies make up the rest (bench.search_scale)")
    parser.add_argument("--embedder", choices=["local", "openai"], default="local",
                        help="latency: local MiniLM, or the project's OpenAI-compatible server (hash vectors)")
    parser.add_argument("--queries", type=int, default=None, help="default: 300 (latency), 150 (quality)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None,
                        help="Keep the database here and reuse it on the next run (default: a temporary folder).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="Write the figures into this Markdown file.")
    args = parser.parse_args(argv)
    latency = args.part == "latency"
    args.messages = args.messages or (100_000 if latency else 2_000)
    args.queries = args.queries or (300 if latency else 150)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-search-") as tmp:
        data = args.data or Path(tmp)
        result, ok = (run_latency if latency else run_quality)(args, data, log)
    command = f"python -m bench.search --part {args.part} --messages {args.messages} --queries {args.queries}"
    if latency:
        command += f" --imported {args.imported} --embedder {args.embedder}"
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    if args.report:
        (_report_latency if latency else _report_quality)(args.report, command, result)
    return 0 if ok else 1


def _report_latency(path: Path, command: str, result: dict[str, Any]) -> None:
    loaded = result["loaded"]
    rows = [[t["case"], str(t["queries"]), str(t["p50_ms"]), str(t["p95_ms"]), str(t["p99_ms"]),
             str(t["embed_p50_ms"]), str(t["search_p50_ms"]), f"**{t['search_p95_ms']}**", str(t["search_p99_ms"]),
             str(t["mean_hits"])] for t in result["timings"]]
    verdict = (
        f"Target p95 ≤ {LATENCY_TARGET_MS:g} ms in every row: "
        f"{'met' if result['ok'] else 'NOT met'} with the query's embedding counted, "
        f"{'met' if result['ok_without_embedding'] else 'NOT met'} for the search itself (database and "
        "fusion: each query run a second time with its vector already known; search() embeds the query "
        "while PostgreSQL answers the full-text half, so the embedding's time cannot be subtracted). "
        f"Load average (1 min) before and after the timed queries: {result.get('load', '?')}. "
        f"**How the data was made:** a `bench.generate` mailbox of {loaded['messages']:,} entries "
        f"(seed {loaded['seed']}) imported by `import_mbox` with the pipeline's own stage functions run "
        "in-process (`bench/search_load.py`: ingest, normalize, contacts, embed; insight marked done, search "
        f"reads none of it): {loaded['imported']:,} messages"
        + (f" in {loaded['seconds']:,.0f} s" if loaded["seconds"] else "")
        + f". Then **copied in SQL** to {loaded['stored_messages']:,} messages and {loaded['chunks']:,} chunks "
        "(`bench/search_scale.py`): every copy is a new message in a new thread with the original's text, "
        "sender and labels, its date moved by a pseudo-random number of days per thread (within the "
        "mailbox's three years); its chunks keep the original's vector plus noise (cosine ≈ 0.9 to it), so "
        "the HNSW graph holds 100k distinct points clustered like the model's. Why copies: importing all "
        "100k through the pipeline ran at ~12–37 messages/s on this shared 2-core machine (1–2+ hours). A "
        "first attempt with the OpenAI-compatible server's hash vectors (`--embedder openai`: pseudo-random "
        "points, no clusters, HNSW's worst case) read ~14k index pages for one date-filtered query. "
        + ("Embeddings and query embeddings: local MiniLM (the default embedder), the query encoded on the "
           "CPU inside each timed search by the embedder search uses for queries (`query_embedder_for`: one "
           "torch thread, the linear layers' weights in fp16; the chunks were embedded in fp32). "
           if loaded["embedder"] == "local" else
           "Embeddings: the project's OpenAI-compatible server (`pipeline/testing/openai_server.py`), "
           "queries embedded over HTTP inside each timed search. ")
        + "Each timed query is the real `pipeline.search.search` (limit 10, one hit per thread) on the "
        "embedded PostgreSQL, warm (after 30 untimed queries); queries are written by "
        "`bench/search_queries.py`, filters drawn from the data (top senders, first names, random 90-day "
        "windows, the topic's user label, Inbox plus a year). The machine is shared with other jobs: the "
        "same command under a load average of 5–7 gave 2–10× these times, the query embedding taking most."
    )
    write_section(path, "search-latency", command,
                  ["case", "queries", "p50 ms", "p95 ms", "p99 ms", "query embedding p50 ms",
                   "without embedding p50", "p95", "p99", "hits/query"], rows, verdict)


def _report_quality(path: Path, command: str, result: dict[str, Any]) -> None:
    loaded = result["loaded"]
    rows = [[topic, str(d["queries"]), str(d["hybrid"]), str(d["full text only"])]
            for topic, d in result["by_topic"].items()]
    recall = result["recall_at_10"]
    rows.append(["**all**", str(result["queries"]), f"**{recall['hybrid']}**", str(recall["full text only"])])
    verdict = (
        f"{'Target met' if recall['hybrid'] >= RECALL_TARGET else 'Target NOT met'}: recall@10 "
        f"{recall['hybrid']} (target ≥ {RECALL_TARGET}) on {result['queries']} labelled queries, answered by "
        f"{result['answering_threads_mean']} threads on average ({result['answering_messages']:,} messages in "
        f"all). Mailbox: `bench.generate`, {loaded['messages']:,} entries (seed {loaded['seed']}), "
        f"{loaded['stored_messages']:,} messages, {loaded['chunks']:,} chunks embedded with local "
        f"`{loaded['model']}`, imported by the pipeline's stage functions (`bench/search_load.py`). Labels: "
        "each query is written from one thread's planted facts (invoice number, city, candidate, ...); the "
        "threads answering it are all threads of that topic with those facts stated in their text. recall@10 "
        "per query = answering threads among the top 10 hits (one per thread) / min(10, answering threads), "
        "averaged. 'full text only' is the same search without the vector half. Missed entirely (recall 0): "
        + "; ".join(f"“{m['query']}”" for m in result["misses"] if m["recall"] == 0)
        + ". These name an identifier next to words the mail does not contain: full text needs every word, "
        "and MiniLM does not place invoice, bug or ticket numbers near each other. Hybrid search latency at "
        f"this size, MiniLM query embedding included, on the shared machine under load (context only): "
        f"p50 {result['latency_ms']['p50']} ms, p95 {result['latency_ms']['p95']} ms."
    )
    write_section(path, "search-quality", command, ["topic", "queries", "recall@10 hybrid", "recall@10 full text"],
                  rows, verdict)


if __name__ == "__main__":
    raise SystemExit(main())
