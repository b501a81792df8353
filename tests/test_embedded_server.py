"""The embedded PostgreSQL: started with mailpipe's tuning, written where an operator can read it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from pipeline.storage.embedded import (
    MAX_SHARED_BUFFERS_MB,
    MIN_SHARED_BUFFERS_MB,
    TUNING_FILE,
    default_shared_buffers_mb,
    tuning,
    write_tuning,
)


def test_the_test_server_runs_with_mailpipes_tuning(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        shown = {k: conn.execute(text(f"SHOW {k}")).scalar() for k in ("shared_buffers", "jit", "random_page_cost")}
    engine.dispose()
    expected = tuning(default_shared_buffers_mb())
    assert shown["jit"] == "off" and shown["random_page_cost"] == "1.1"
    mb = int(expected["shared_buffers"].removesuffix("MB"))
    assert shown["shared_buffers"] == (f"{mb // 1024}GB" if mb % 1024 == 0 else f"{mb}MB")


def test_shared_buffers_default_is_a_quarter_of_memory_within_bounds() -> None:
    assert MIN_SHARED_BUFFERS_MB <= default_shared_buffers_mb() <= MAX_SHARED_BUFFERS_MB


def test_tuning_is_rewritten_and_included_once(tmp_path: Path) -> None:
    (tmp_path / "postgresql.conf").write_text("max_connections = 100\n")
    write_tuning(tmp_path, tuning(256))
    write_tuning(tmp_path, tuning(512))  # a second start with another setting
    main = (tmp_path / "postgresql.conf").read_text()
    assert main.count(f"include_if_exists = '{TUNING_FILE}'") == 1
    conf = (tmp_path / TUNING_FILE).read_text()
    assert "shared_buffers = '512MB'" in conf and "256MB" not in conf
