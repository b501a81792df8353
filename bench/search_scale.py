"""Grows an imported benchmark database to a target size by copying its messages in SQL.

Importing 100k messages through the pipeline takes hours on 2 cores (parsing, per-message upserts,
embedding), which a search benchmark does not need to measure. So a few thousand generated
messages are imported by the pipeline's stages (`bench.search_load`), and this module adds copies
of them until the target count: each copy is a new message in a new thread (its own ids,
Message-ID, message key and thread key), with the original's text, subject, sender, labels and
date moved by a pseudo-random number of days per copied thread (wrapped into the mailbox's span,
so neighbours in vector space do not all share one date, which would make date filters look
unrealistically selective around every query), and chunks with the original's text and the
original's vector plus random noise (cosine ≈ 0.9 to it, renormalized): the HNSW graph gets as
many distinct points as a real mailbox of that size, clustered the way the embedding model puts
similar mail, not 50 copies of one point. The HNSW index is dropped during the copy and built again
with its migration's definition, as a bulk load would.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, text

from pipeline.storage.models import EMBEDDING_DIMENSIONS

HNSW_INDEX = "ix_embedding_chunks_embedding_hnsw"
HNSW_DEFINITION = (f"CREATE INDEX {HNSW_INDEX} ON embedding_chunks USING hnsw (embedding vector_cosine_ops) "
                   "WITH (m = 16, ef_construction = 64)")  # as in migration 0001 and models.py
COPY_MARK = "#copy"
# Per-dimension noise: a unit vector's components are ~1/sqrt(384) = 0.051, so 0.025 moves a copy to a
# cosine similarity of about 0.9 from its original: near it, not on it.
NOISE = 0.025


def scale_to(engine: Engine, target: int, log: Callable[[str], None] = print) -> int:
    """Copy the imported messages until there are `target`; returns the number of messages."""
    with engine.begin() as conn:
        base = int(conn.execute(text(
            f"SELECT count(*) FROM messages WHERE message_key NOT LIKE '%{COPY_MARK}%'")).scalar_one())
        have = int(conn.execute(text("SELECT count(*) FROM messages")).scalar_one())
    if have >= target:
        return have
    if base == 0:
        raise ValueError("nothing to copy: import some messages first")
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX IF EXISTS {HNSW_INDEX}"))
    copy = have // base
    while have < target:
        n = min(base, target - have)
        with engine.begin() as conn:
            _copy_once(conn, copy, n)
        have += n
        log(f"copy {copy}: {have} messages")
        copy += 1
    log("building the HNSW index ...")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SET maintenance_work_mem = '1GB'"))
        conn.execute(text("SET max_parallel_maintenance_workers = 2"))
        conn.execute(text(HNSW_DEFINITION))
        conn.execute(text("VACUUM ANALYZE"))
    return have


# A copy's date: its original's (+k minutes) moved by (thread id × a prime) mod span days, wrapped into
# [first, first + span) of the imported mailbox. :first and :span_s (seconds) are bound by the caller.
_MOVED = ("CAST(:first AS timestamptz) + make_interval(secs => CAST(mod(CAST(extract(epoch FROM ({at}) - "
          "CAST(:first AS timestamptz)) + mod(coalesce({thread}, 0) * 7919, 1095) * 86400 AS numeric), "
          "CAST(:span_s AS numeric)) AS float8))")


_PLUS_K_MINUTES = "b.sent_at + :k * interval '1 minute'"  # no two copies of a message at the same instant


def _copy_once(conn: object, k: int, n: int) -> None:
    mark = f"{COPY_MARK}{k}"
    run = conn.execute  # type: ignore[attr-defined]
    run(text(
        "CREATE TEMP TABLE base ON COMMIT DROP AS SELECT * FROM messages "
        f"WHERE message_key NOT LIKE '%{COPY_MARK}%' ORDER BY id LIMIT :n"), {"n": n})
    run(text(
        "INSERT INTO threads (account_id, thread_key, subject, message_count, first_at, last_at) "
        "SELECT t.account_id, t.thread_key || :mark, t.subject, t.message_count, t.first_at, t.last_at "
        "FROM threads t WHERE t.id IN (SELECT thread_id FROM base)"), {"mark": mark})
    run(text(
        "INSERT INTO messages (account_id, message_key, rfc_message_id, source_ref, labels, raw, size, "
        "content_hash, thread_id, sent_at, subject, from_email, from_name, recipients, in_reply_to, "
        '"references", content_type, category, from_me, is_bulk, full_text, stripped_text, attachments, '
        "defects, normalized_at, contacts_at, embedded_at, insight_at) "
        "SELECT b.account_id, b.message_key || :mark, b.rfc_message_id || :mark, b.source_ref, b.labels, b.raw, "
        f"b.size, b.content_hash, t2.id, {_MOVED.format(at=_PLUS_K_MINUTES, thread='t2.id')}, "
        "b.subject, b.from_email, "
        'b.from_name, b.recipients, b.in_reply_to, b."references", b.content_type, b.category, b.from_me, '
        "b.is_bulk, b.full_text, b.stripped_text, b.attachments, b.defects, b.normalized_at, b.contacts_at, "
        "b.embedded_at, b.insight_at "
        "FROM base b LEFT JOIN threads t1 ON t1.id = b.thread_id "
        "LEFT JOIN threads t2 ON t2.account_id = t1.account_id AND t2.thread_key = t1.thread_key || :mark"),
        {"mark": mark, "k": k, **_span(conn)})
    run(text(
        "INSERT INTO embedding_chunks (message_id, account_id, chunk_index, content_hash, model, text, embedding) "
        "SELECT m2.id, c.account_id, c.chunk_index, encode(sha256(convert_to(c.content_hash || :mark, 'UTF8')), "
        "'hex'), c.model, c.text, "
        # Uniform noise of standard deviation NOISE per dimension (0 * c.id: drawn again for every row).
        f"l2_normalize(c.embedding + ARRAY(SELECT (random() - 0.5) * {NOISE * 12 ** 0.5:.4f} + 0 * c.id "
        f"FROM generate_series(1, {EMBEDDING_DIMENSIONS}))::vector) "
        "FROM base b JOIN embedding_chunks c ON c.message_id = b.id "
        "JOIN messages m2 ON m2.account_id = b.account_id AND m2.message_key = b.message_key || :mark"),
        {"mark": mark})


def _span(conn: object) -> dict[str, object]:
    first, last = conn.execute(text(  # type: ignore[attr-defined]
        f"SELECT min(sent_at), max(sent_at) FROM messages WHERE message_key NOT LIKE '%{COPY_MARK}%'")).one()
    return {"first": first, "span_s": max(1.0, (last - first).total_seconds())}
