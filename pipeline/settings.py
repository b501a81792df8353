"""The one settings object, built from the environment (prefix MAILPIPE_) and passed down."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
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
    broker_url: str | None = Field(
        default=None, description="Celery broker (e.g. redis://...); unset: kombu's SQLAlchemy transport."
    )
    window_size: int = Field(default=200, ge=1, le=5000, description="Messages per window.")
    windows_in_flight: int = Field(default=4, ge=1, le=256, description="Windows in flight per account.")
    embedder: str = Field(default="local", description="'local' (MiniLM on CPU) or 'none'.")
    embed_batch_size: int = Field(
        default=16, ge=1, description="Texts per model call. Attention memory grows with it: at 256 tokens a "
        "batch of 64 adds ~490 MiB to a worker's peak, 16 adds ~110 MiB, at the same speed on CPU."
    )
    worker_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
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
    gmail_batch_size: int = Field(default=50, ge=1, le=50, description="Calls per batch request (Gmail: ≤ 50).")
    gmail_list_page_size: int = Field(default=500, ge=1, le=500)
    gmail_timeout: float = Field(default=30.0, gt=0, description="Seconds per Gmail HTTP request.")
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

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"



@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for a process that has no other way to receive them (a Celery worker)."""
    return Settings()
