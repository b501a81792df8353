"""Hybrid search: pgvector nearest chunks and PostgreSQL full text, merged by reciprocal rank fusion."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, text

from pipeline.embeddings import Embedder
from pipeline.storage.db import transaction

RRF_K = 60  # the usual constant: damps the weight of the very first ranks
CANDIDATES = 50  # per method, before fusion
HNSW_EF_SEARCH = 100


@dataclass(frozen=True, slots=True)
class Hit:
    message_id: str
    thread_id: int | None
    subject: str
    from_: str
    date: str | None
    score: float
    snippet: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("from_")
        return d


def search(engine: Engine, query: str, *, account_id: int | None, limit: int = 10,
           embedder: Embedder | None = None) -> list[Hit]:
    query = query.strip()
    if not query:
        return []
    with transaction(engine) as s:
        scores: dict[int, float] = {}
        snippets: dict[int, str] = {}
        if embedder is not None:
            vector = embedder.embed([query])[0]
            s.execute(text(f"SET LOCAL hnsw.ef_search = {HNSW_EF_SEARCH}"))
            rows = s.execute(
                text(
                    "SELECT message_id, text FROM embedding_chunks "
                    "WHERE (CAST(:acct AS int) IS NULL OR account_id = :acct) AND model = :model "
                    "ORDER BY embedding <=> CAST(:v AS vector) LIMIT :n"
                ),
                {"v": str(list(vector)), "acct": account_id, "model": embedder.name, "n": CANDIDATES},
            ).all()
            seen: list[int] = []
            for mid, chunk in rows:
                if mid not in seen:
                    seen.append(mid)
                    snippets.setdefault(mid, _chunk_snippet(chunk))
            for rank, mid in enumerate(seen):
                scores[mid] = scores.get(mid, 0.0) + 1.0 / (RRF_K + rank + 1)
        rows = s.execute(
            text(
                "SELECT id, ts_headline('english', coalesce(stripped_text, ''), q, "
                "'MaxWords=30, MinWords=12, MaxFragments=1, StartSel=«, StopSel=»') "
                "FROM messages, websearch_to_tsquery('english', :q) q "
                "WHERE tsv @@ q AND (CAST(:acct AS int) IS NULL OR account_id = :acct) "
                "ORDER BY ts_rank_cd(tsv, q) DESC LIMIT :n"
            ),
            {"q": query, "acct": account_id, "n": CANDIDATES},
        ).all()
        for rank, (mid, headline) in enumerate(rows):
            scores[mid] = scores.get(mid, 0.0) + 1.0 / (RRF_K + rank + 1)
            snippets[mid] = headline
        if not scores:
            return []
        meta = s.execute(
            text(
                "SELECT id, coalesce(rfc_message_id, message_key), thread_id, coalesce(subject, ''), "
                "coalesce(from_email, ''), sent_at FROM messages WHERE id = ANY(:ids)"
            ),
            {"ids": list(scores)},
        ).all()
    hits: dict[Any, Hit] = {}
    for mid, rfc, thread_id, subject, sender, sent_at in sorted(meta, key=lambda r: -scores[r[0]]):
        key = thread_id if thread_id is not None else f"m{mid}"
        if key in hits:
            continue  # one hit per thread: its best message
        hits[key] = Hit(
            message_id=rfc, thread_id=thread_id, subject=subject, from_=sender,
            date=sent_at.isoformat() if sent_at else None, score=round(scores[mid], 5),
            snippet=" ".join(snippets.get(mid, "").split())[:300],
        )
    return list(hits.values())[:limit]


def _chunk_snippet(chunk: str) -> str:
    # Chunks start with the "Subject:/From:" prefix; the body after it is the useful part.
    lines = chunk.splitlines()
    body = [ln for ln in lines if not ln.startswith(("Subject:", "From:"))]
    return " ".join(" ".join(body).split())[:300]
