"""The one settings object, built from the environment (prefix MAILPIPE_) and passed down."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mailpipe"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILPIPE_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data folder (embedded Postgres, logs).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of a PostgreSQL with pgvector; unset: embedded server."
    )
    embedded_shared_buffers_mb: int | None = Field(
        default=None, ge=16, description="The embedded server's shared buffers in MB; unset: a quarter of the "
        "memory, 128 MB to 1 GB. Applies when that server starts.",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (e.g. redis://...); unset: kombu's SQLAlchemy transport."
    )
    # Each window costs five task hops through the broker and a few statements per stage whatever its
    # size: from 200 to 500, a 10k import's run went from 12.0-13.0 s to 10.6-10.8 s (docs/PERFORMANCE.md,
    # seventh round). Its messages' bytes are what a stage holds in memory at once.
    window_size: int = Field(default=500, ge=1, le=5000, description="Messages per window.")
    windows_in_flight: int = Field(default=4, ge=1, le=256, description="Windows in flight per account.")
    embedder: Literal["local", "openai", "none"] = Field(
        default="local", description="'local' (MiniLM on CPU), 'openai' (the AI endpoint's /v1/embeddings) or 'none'."
    )
    embed_batch_size: int = Field(
        default=8, ge=1, description="Texts per model call. Attention memory grows with it: at 256 tokens a "
        "batch of 64 adds ~490 MiB to a worker's peak, 16 adds ~110 MiB; 8 and 16 run at the same speed on CPU."
    )
    worker_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    worker_max_growth_mib: int | None = Field(
        default=None, ge=1, description="MiB a worker child may grow since it was ready (its model loaded) "
        "before it is replaced after its task; unset: 100 with the local embedder (torch fragments its heap), "
        "1024 otherwise (tasks.config)."
    )
    worker_max_tasks_per_child: int | None = Field(
        default=None, ge=0, description="Tasks before a worker child is replaced; unset or 0: never (the "
        "growth limit replaces the children that need it)."
    )
    worker_prefetch_multiplier: int | None = Field(
        default=None, ge=1, le=16, description="Messages a worker holds per child (Celery's prefetch multiplier); "
        "unset: 2 on the embedded SQL broker, 1 on any other (tasks.config)."
    )
    worker_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Log level of the CLI's own worker pool (logs/worker.log)."
    )
    max_deliveries: int = Field(default=5, ge=1, description="Redeliveries of one task before quarantine.")
    stage_soft_time_limit: float = Field(default=600.0, gt=0)
    stage_time_limit: float = Field(default=660.0, gt=0)
    contact_half_life_days: float = Field(default=180.0, gt=0)
    run_stale_seconds: float = Field(
        default=120.0, gt=0, description="A running run whose driver is silent this long may be taken over."
    )

    # Gmail
    secret_key: str | None = Field(
        default=None,
        description="Fernet key(s) encrypting OAuth refresh tokens at rest; comma-separated, newest first, "
        "to rotate. Make one with `mailpipe accounts keygen`.",
    )
    gmail_api_url: str | None = Field(
        default=None, description="Gmail API endpoint override (a test server); unset: Google's."
    )
    gmail_regime: str = Field(default="legacy", description="Quota regime: 'legacy' or '2026' (DESIGN.md §3).")
    gmail_quota_per_minute: int | None = Field(
        default=None, ge=1, description="Per-user units per minute; unset: the regime's (15,000 or 6,000)."
    )
    gmail_quota_headroom: float = Field(
        default=1.0, gt=0, le=1, description="Fraction of the per-user quota mailpipe may spend."
    )
    gmail_windows_fetching: int = Field(
        default=2, ge=1, le=256, description="Windows of a Gmail sync waiting for or in their fetch at once, per "
        "account: two keep the account's quota busy while one of them is stored; more wait in the ingest queue.")
    gmail_batch_size: int = Field(default=50, ge=1, le=50, description="Calls per batch request (Gmail: ≤ 50).")
    gmail_list_page_size: int = Field(default=500, ge=1, le=500)
    gmail_timeout: float = Field(default=30.0, gt=0, description="Seconds per Gmail HTTP request.")
    gmail_fetch_attachments: bool = Field(
        default=False, description="Download attachment bodies (format=raw). Off: format=full without them; "
        "attachments are still recorded by name, type and size, at the same quota cost."
    )
    gmail_catchup_margin_days: int = Field(
        default=2, ge=0, description="An expired cursor or a Takeout backfill is caught up from this many days "
        "before the newest message we hold (dates in `after:` are whole days; clocks and time zones differ)."
    )
    gmail_push_topic: str | None = Field(
        default=None, description="Pub/Sub topic for Gmail push (projects/P/topics/T); unset: no watch."
    )
    redis_url: str | None = Field(
        default=None, description="Redis for shared quota and breaker state; unset: the broker if it is Redis, "
        "else PostgreSQL."
    )

    # AI: OpenAI or any OpenAI-compatible endpoint (Ollama, vLLM, LM Studio)
    ai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint, ending in /v1; unset: OpenAI's (api.openai.com)."
    )
    ai_api_key: SecretStr | None = Field(
        default=None, description="Key for the AI endpoint; unset: OPENAI_API_KEY, else none (a local server)."
    )
    ai_embed_model: str = Field(
        default="text-embedding-3-small", description="Embedding model when embedder='openai'; it is asked for "
        "384 dimensions, the size of the stored vectors."
    )
    ai_embed_batch_size: int = Field(default=64, ge=1, le=2048, description="Texts per embeddings request.")
    ai_timeout: float = Field(default=30.0, gt=0, description="Seconds per AI HTTP request.")
    enrichment_sweep_seconds: float = Field(
        default=300.0, gt=0, description="How often beat looks for enrichment an AI outage left owed and, "
        "once the endpoint answers again, resumes it."
    )

    # Schedules (one `celery -A tasks beat`) and upkeep (pipeline/maintenance.py)
    gmail_sync_interval_seconds: float = Field(
        default=900.0, ge=0, description="How often beat queues an incremental sync of every active Gmail account "
        "(push notifications can be late or lost, so a poll stays); 0: no scheduled syncs."
    )
    gmail_sync_jitter_seconds: float = Field(
        default=60.0, ge=0, description="Each account's scheduled sync starts at a random point of this window "
        "(at most the interval), so accounts do not all call Google and take the sync workers at once."
    )
    watch_renew_seconds: float = Field(
        default=86_400.0, gt=0, description="How often beat renews Gmail push watches (they lapse after 7 days); "
        "only scheduled when MAILPIPE_GMAIL_PUSH_TOPIC is set."
    )
    watchdog_seconds: float = Field(default=60.0, gt=0, description="How often beat runs the stuck-run watchdog.")
    watchdog_stale_seconds: float = Field(
        default=900.0, gt=0, description="A running run whose driver has sent no heartbeat for this long is "
        "presumed dead by the watchdog (a driver process gone from this host is noticed at once). Longer than "
        "run_stale_seconds: a driver can wait minutes on a paused Gmail quota between heartbeats."
    )
    run_abandon_seconds: float = Field(
        default=21_600.0, gt=0, description="A run whose driver is gone but whose windows are still open is "
        "finished by the watchdog (lost tasks sent again); after this long without its driver it is abandoned."
    )
    retention_days: float = Field(
        default=30.0, gt=0, description="Finished runs older than this are deleted with their windows, window "
        "items and failure records (never mail; each account's latest run and runs owing enrichment are kept)."
    )
    window_items_retention_days: float = Field(
        default=7.0, gt=0, description="Window items (one row per message per run) of finished runs older than "
        "this are deleted before the run itself; run and window rows stay for status."
    )
    retention_interval_seconds: float = Field(default=3600.0, gt=0, description="How often beat applies retention.")
    reconcile_seconds: float = Field(
        default=86_400.0, gt=0, description="How often beat recomputes stored counters (contacts, threads, windows, "
        "runs) from the rows they count and repairs any that drifted."
    )
    beat_key_prefix: str = Field(
        default="mailpipe:beat:", description="Redis key prefix of the RedBeat schedule and its lock (Redis broker)."
    )
    metrics_key_prefix: str = Field(
        default="mailpipe:metrics:", description="Redis key prefix of the task metrics every worker records."
    )

    # resilience
    breaker_fail_max: int = Field(
        default=5, ge=1, description="Consecutive transient failures or timeouts of one dependency (Gmail, an "
        "AI endpoint) that open its circuit breaker, in every worker at once."
    )
    breaker_reset_seconds: float = Field(
        default=30.0, gt=0, description="Seconds an open breaker refuses calls before one trial call may pass."
    )
    ai_concurrency_max: int = Field(
        default=4, ge=1, description="Most AI calls in flight at once across all workers; the limit shrinks "
        "below this while the endpoint errs and grows back when it recovers."
    )
    # Dynamic time limits: soft = base + per_unit × units, capped at stage_soft_time_limit; the hard limit
    # adds the grace stage_time_limit − stage_soft_time_limit. Per-unit values are ~5–10× what this
    # 2-core machine measured, so a slow but healthy task is not killed while a hung one is, soon.
    timeout_ingest_base: float = Field(
        default=60.0, ge=0, description="Seconds every ingest (fetch + store) task gets besides its fetching."
    )
    timeout_ingest_per_unit: float = Field(
        default=3.0, ge=0, description="Multiplier on the expected fetch time, window size × observed seconds "
        "per message (which includes the waits the account's quota imposes)."
    )
    timeout_normalize_base: float = Field(default=30.0, ge=0, description="Seconds every normalize task gets.")
    timeout_normalize_per_unit: float = Field(
        # Parsing and HTML-to-text run at a few MB/s in CPython; 2 µs per byte is 0.5 MB/s.
        default=2e-6, ge=0, description="Seconds per byte of raw message in the window."
    )
    timeout_embed_base: float = Field(
        default=30.0, ge=0, description="Seconds every embed task gets (the first one in a worker loads the model)."
    )
    timeout_embed_per_unit: float = Field(
        # MiniLM here embeds ~25 texts/s of ≤256 tokens, ~6,400 tokens/s, i.e. 0.16 ms per token with the
        # machine to itself; two embed tasks share the 2 cores (0.3 ms), and chunking, hashing and the
        # upserts add their part: 2 ms per token is ~6× headroom.
        default=0.002, ge=0, description="Seconds per token to embed."
    )
    timeout_insight_base: float = Field(default=60.0, ge=0, description="Seconds every insight task gets.")
    timeout_insight_per_unit: float = Field(
        # Hosted chat endpoints answer a ~600-token thread prompt in ~3-4 s (mostly output): ~6 ms per prompt
        # token; 20 ms leaves headroom for a GPU-served local model. A CPU-only local LLM needs more.
        default=0.02, ge=0, description="Seconds per prompt token sent for insights."
    )

    # LLM insights (DESIGN.md §6). The default follows the endpoint: configuring an AI base URL is the
    # signal that mail may go to a model; without one insights stay rules-only unless asked for.
    insights: Literal["rules", "llm"] = Field(
        default_factory=lambda data: "llm" if data.get("ai_base_url") else "rules",
        description="'rules' (header and keyword rules only) or 'llm' (chat completions on the AI endpoint, "
        "rules still first for bulk mail); default: 'llm' when MAILPIPE_AI_BASE_URL is set, else 'rules'.",
    )
    ai_chat_model: str = Field(default="gpt-4o-mini", description="Chat model for LLM insights.")
    insight_message_chars: int = Field(
        default=2000, ge=100, description="Characters of each message's text sent to the LLM (the rest is cut)."
    )
    insight_thread_messages: int = Field(
        default=20, ge=1, description="Most messages of one thread sent in one request (the latest ones); "
        "older ones are said to be omitted."
    )
    insight_max_output_tokens: int = Field(
        default=800, ge=64, description="Completion tokens one insight request may use (also what the budget "
        "reserves for its answer before the call)."
    )
    ai_redact: Literal["auto", "on", "off"] = Field(
        default="auto", description="Redact secrets (keys, tokens, JWTs, card numbers, private keys) before "
        "remote calls: 'auto' redacts unless the endpoint is on loopback (this machine)."
    )
    ai_price_input_per_million: float = Field(
        default=0.15, ge=0, description="USD per 1M prompt tokens of ai_chat_model (gpt-4o-mini's list price)."
    )
    ai_price_output_per_million: float = Field(
        default=0.60, ge=0, description="USD per 1M completion tokens of ai_chat_model."
    )
    ai_reservation_hold_seconds: float = Field(
        default=900.0, gt=0, description="How long an LLM call's reservation on the daily budget holds: longer "
        "than any call lasts; one left by a worker killed mid-call is given back after this."
    )
    ai_daily_budget_usd: float = Field(
        default=1.0, ge=0, description="Most USD of LLM insight calls per account per UTC day; once spent, "
        "insights wait (owed enrichment) for the next day. 0 allows no call."
    )

    # The web API (`mailpipe serve`)
    web_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body the web API reads (413 beyond), checked "
        "from Content-Length and again while reading."
    )
    web_signature_tolerance_seconds: int = Field(
        default=300, ge=1, description="How far a signed trigger's X-Mailpipe-Timestamp may be from the server's "
        "clock; a signature is single-use for as long as its timestamp is within this window."
    )
    web_db_pool_size: int = Field(
        default=10, ge=1, description="Database connections each web server process keeps (plus 5 overflow)."
    )
    sync_queued_stale_seconds: float = Field(
        default=3600.0, gt=0, description="A queued sync run no worker has picked up for this long is taken for "
        "lost (its task message gone): the next trigger abandons it and queues a new one."
    )
    push_token: SecretStr | None = Field(
        default=None, description="Shared secret of the Gmail push endpoint: the Pub/Sub push subscription's URL "
        "carries it as ?token=...; unset: the endpoint refuses every request."
    )
    push_audience: str | None = Field(
        default=None, description="Expected `aud` of the OIDC token Pub/Sub sends as Authorization: Bearer (when "
        "the subscription has push authentication); unset: the token, if any, is not checked."
    )
    push_jwt_certs_url: str | None = Field(
        default=None, description="Where the push OIDC token's signing certificates are "
        "(https://www.googleapis.com/oauth2/v1/certs for Google's). Without it the token's signature cannot be "
        "verified: only its audience is compared, and ?token= remains the endpoint's authentication."
    )

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"



@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for a process that has no other way to receive them (a Celery worker)."""
    return Settings()
