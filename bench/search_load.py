"""Builds the search benchmarks' databases: a generated mailbox imported by the pipeline's own stages.

`import_mbox` (the code behind `mailpipe import`) reads the file into windows; instead of sending
each window's chain to Celery, the dispatch runs the same stage functions the tasks run, in this
process, one window after the other: ingest, normalize, contacts, embed (`embed_pending`, which the
embed task runs). Insight is marked done without work: search reads nothing it writes. Rows,
threads, labels, chunks and vectors are therefore exactly what a worker pool would have stored;
only the scheduling differs, which search does not see.

A database is kept in `<data>/pgdata` with a `loaded.json` beside it describing what it holds, so
a rerun with the same mailbox and embedder reuses it instead of importing again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from sqlalchemy import Engine, text

from bench.generate import generate_mbox
from bench.search_scale import scale_to
from pipeline.importing import import_mbox
from pipeline.runs import StageClaim
from pipeline.settings import Settings
from pipeline.stages.contacts import contacts_window
from pipeline.stages.embed import EmbeddingTools, embed_pending
from pipeline.stages.ingest import ingest_window
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import StageResult, run_stage
from pipeline.storage.db import engine_for, migrate
from pipeline.storage.embedded import start_embedded_postgres

ACCOUNT = "me@example.com"
REMOTE_MODEL = "text-embedding-3-small"  # any name the project server knows; vectors come from a hash


class LoadError(RuntimeError):
    """A stage failed while building a benchmark database: the figures would describe a partial mailbox."""


@dataclass(frozen=True, slots=True)
class Loaded:
    messages: int  # mbox entries generated
    seed: int
    embedder: str  # "local" or "openai"
    model: str
    imported: int  # messages the pipeline's stages stored
    stored_messages: int  # after copies (bench.search_scale), if any
    chunks: int
    seconds: float  # import time (0 when reused)


@contextmanager
def openai_server() -> Iterator[str]:
    """The project's OpenAI-compatible server in its own process (so it takes no GIL from ours): base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.testing.openai_server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise LoadError("the OpenAI-compatible server did not start")
        yield str(json.loads(line)["base_url"])
    finally:
        proc.terminate()
        proc.wait(10)


def bench_settings(url: str, embedder: Literal["local", "openai"], base_url: str | None) -> Settings:
    extra: dict[str, Any] = {}
    if embedder == "openai":
        extra = {"ai_base_url": base_url, "ai_api_key": SecretStr("bench"), "ai_embed_model": REMOTE_MODEL,
                 "ai_embed_batch_size": 256}
    # No broker: breakers live in PostgreSQL and the AI concurrency limiter in this process.
    return Settings(database_url=url, broker_url=None, embedder=embedder, window_size=500, **extra)


def prepare_database(data: Path, messages: int, seed: int, embedder: Literal["local", "openai"], base_url: str | None,
                     log: Any = print, scale: int | None = None) -> tuple[Engine, Settings, Loaded, Path]:
    """Start (and fill, unless it already holds this mailbox) the database in `data`; the meta file path.

    `scale`: grow the imported mailbox to this many messages with copies (`bench.search_scale`).
    """
    data.mkdir(parents=True, exist_ok=True)
    url = start_embedded_postgres(data / "pgdata")
    migrate(url)
    engine = engine_for(url)
    settings = bench_settings(url, embedder, base_url)
    meta = data / f"gen-{messages}-{seed}.meta.jsonl"
    marker = data / "loaded.json"
    if marker.exists():
        loaded = Loaded(**json.loads(marker.read_text()))
        same = (loaded.messages, loaded.seed, loaded.embedder) == (messages, seed, embedder)
        if not same or not meta.exists():
            raise LoadError(f"{data} holds another mailbox ({loaded}); use another --data folder")
        if scale and loaded.stored_messages < scale:
            loaded = _grow(engine, loaded, scale, marker, log)
        log(f"reusing {data}: {loaded.stored_messages} messages, {loaded.chunks} chunks ({loaded.model})")
        return engine, settings, replace_seconds(loaded), meta
    mbox = data / f"gen-{messages}-{seed}.mbox"
    log(f"generating {messages} messages (seed {seed}) ...")
    generate_mbox(mbox, messages, seed=seed, account=ACCOUNT, meta_path=meta)
    from pipeline.stages.embed import tools_for

    tools = tools_for(settings, engine, threads=None)
    if tools is None:
        raise LoadError("no embedder configured")
    log(f"importing with the pipeline's stages, embedder {tools.embedder.name} ...")
    started = time.monotonic()
    dispatch = _InlineDispatch(engine, settings, tools)
    summary = import_mbox(engine, settings, mbox, ACCOUNT, dispatch)
    seconds = round(time.monotonic() - started, 1)
    if dispatch.failures or summary.failed_windows or summary.status != "done":
        raise LoadError(f"import ended {summary.status}: {summary.as_dict()}; stages {dispatch.failures}")
    with engine.begin() as conn:
        imported = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
    log(f"imported {imported} messages in {seconds} s")
    mbox.unlink()  # the meta file is what the queries need; the mbox can be regenerated from the seed
    loaded = Loaded(messages=messages, seed=seed, embedder=embedder, model=tools.embedder.name,
                    imported=int(imported), stored_messages=int(imported), chunks=0, seconds=seconds)
    loaded = _grow(engine, loaded, scale or 0, marker, log)
    return engine, settings, loaded, meta


def _grow(engine: Engine, loaded: Loaded, scale: int, marker: Path, log: Any) -> Loaded:
    """Copies up to `scale` messages (if more than imported), VACUUM ANALYZE, and the marker written."""
    if scale > loaded.stored_messages:
        scale_to(engine, scale, log)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # What autovacuum would do after a bulk load, done now so plans and index-only scans are settled.
        conn.execute(text("VACUUM ANALYZE"))
    with engine.begin() as conn:
        stored = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
        chunks = conn.execute(text("SELECT count(*) FROM embedding_chunks")).scalar_one()
    loaded = Loaded(**{**asdict(loaded), "stored_messages": int(stored), "chunks": int(chunks)})
    marker.write_text(json.dumps(asdict(loaded)))
    log(f"{stored} messages, {chunks} chunks")
    return loaded


def replace_seconds(loaded: Loaded) -> Loaded:
    return Loaded(**{**asdict(loaded), "seconds": 0.0})


class _InlineDispatch:
    """The driver's dispatch: the window's whole chain, run here and now (what the Celery tasks run)."""

    def __init__(self, engine: Engine, settings: Settings, tools: EmbeddingTools) -> None:
        self.engine, self.settings, self.tools = engine, settings, tools
        self.failures: list[StageResult] = []

    def __call__(self, window_id: int) -> None:
        engine, settings = self.engine, self.settings
        steps = [
            run_stage(engine, settings, window_id, "ingest", ingest_window),
            run_stage(engine, settings, window_id, "normalize", normalize_window),
            run_stage(engine, settings, window_id, "contacts", lambda s, c: contacts_window(s, c, settings)),
            run_stage(engine, settings, window_id, "embed", lambda s, c: {}, prepare=self._embed),
            run_stage(engine, settings, window_id, "insight", lambda s, c: {}),
        ]
        # Not raised: the driver would take an exception for a broker hiccup and send the window again.
        self.failures.extend(r for r in steps if r.outcome not in ("done", "already_done"))

    def _embed(self, claim: StageClaim) -> None:
        embed_pending(self.engine, claim, self.tools)
