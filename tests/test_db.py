"""Engines per process (pipeline.storage.db)."""

from __future__ import annotations

from pipeline.storage.db import engine_for

URL = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: creating an engine opens nothing


def test_an_engine_is_shared_only_by_callers_asking_for_the_same_options() -> None:
    default = engine_for(URL)
    web = engine_for(URL, pool_size=7, pre_ping=False)
    # `mailpipe serve` made the default engine first, then the web's: the web got the pinging one.
    assert web is not default
    assert web.pool._pre_ping is False and default.pool._pre_ping is True  # type: ignore[attr-defined]
    assert web.pool.size() == 7  # type: ignore[attr-defined]
    assert engine_for(URL, pool_size=7, pre_ping=False) is web and engine_for(URL) is default
