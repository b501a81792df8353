"""Embedding throughput scenario: the embed stage against a bare sentence-transformers `encode`.

A generated mailbox is imported through the real CLI with embeddings off (so ingest, normalize,
contacts and the rules run as in production, on the embedded PostgreSQL with its own worker pool).
Then, in this process and alternating which goes first, each round

- the stage: every window's `embed_pending` (chunking, hashing, the known-vector lookup, MiniLM
  through `LocalEmbedder`, the orphan delete, the inserts into the HNSW-indexed table, commits);
- bare: `SentenceTransformer.encode` of exactly the texts the stage embedded in that round, with the
  same batch size, the same torch threads and the same model files;

with the chunks table emptied and `embedded_at` cleared before each stage run. Throughput is chunks
per second; the verdict is the median over rounds of stage/bare (target ≥ 0.9), since each round's
pair ran back to back on a shared, noisy machine.

    python -m bench.embed_throughput --messages 300 --rounds 5 [--json] [--report docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.generate import generate_mbox
from bench.report import write_section
from pipeline.embeddings.chunking import load_tokenizer
from pipeline.embeddings.local import LocalEmbedder, bundled_model_dir
from pipeline.runs import StageClaim
from pipeline.stages.embed import EmbeddingTools, embed_pending
from pipeline.storage.db import engine_for, migrate
from pipeline.storage.embedded import start_embedded_postgres

TARGET = 0.9


@dataclass(frozen=True, slots=True)
class Round:
    first: str  # "stage" or "bare": which ran first this round
    chunks: int  # texts embedded (by the stage; the same texts by bare)
    tokens: int  # their tokens, [CLS] and [SEP] included
    stage_seconds: float
    bare_seconds: float

    @property
    def ratio(self) -> float:
        return self.bare_seconds / self.stage_seconds  # = stage throughput / bare throughput


def import_without_embeddings(mbox: Path, home: Path, database_url: str) -> dict[str, Any]:
    """The real import (`mailpipe import`, its own worker pool on the embedded broker), embeddings off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env.update({"MAILPIPE_HOME": str(home), "MAILPIPE_DATABASE_URL": database_url, "MAILPIPE_EMBEDDER": "none",
                "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "import", str(mbox), "--account", "me@example.com",
                           "--json"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}): {proc.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def _claims(engine: Engine) -> list[StageClaim]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT w.id, w.run_id, r.account_id FROM windows w JOIN sync_runs r "
                                 "ON r.id = w.run_id ORDER BY w.id")).all()
    return [StageClaim(window_id=w, run_id=r, account_id=a, attempts=1, upstream_state="done") for w, r, a in rows]


def _reset(engine: Engine) -> None:
    """Back to 'normalized, never embedded' (TRUNCATE also empties the HNSW index, so rounds start equal)."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE embedding_chunks"))
        conn.execute(text("UPDATE messages SET embedded_at = NULL"))
        conn.execute(text("UPDATE windows SET chunks_embedded = 0"))


def run_stage(engine: Engine, tools: EmbeddingTools, claims: list[StageClaim]) -> tuple[float, int]:
    _reset(engine)
    started = time.perf_counter()
    embedded = sum(embed_pending(engine, claim, tools) for claim in claims)
    return time.perf_counter() - started, embedded


def embedded_texts(engine: Engine) -> list[str]:
    """The texts the stage computed vectors for: one per distinct content hash."""
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT DISTINCT ON (content_hash) text FROM embedding_chunks "
                                      "ORDER BY content_hash")).scalars())


def run_bare(model: Any, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                 show_progress_bar=False)
    return time.perf_counter() - started


def measure(messages: int, rounds: int, batch_size: int, threads: int, seed: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mailpipe-bench-embed-"))
    # Removed at exit, after the embedded server (registered later, so stopped first) even on Ctrl-C.
    atexit.register(shutil.rmtree, workdir, True)
    mbox = workdir / f"gen-{messages}.mbox"
    generate_mbox(mbox, messages, seed=seed)
    # Started here, so it outlives the import's own process and serves this one.
    url = start_embedded_postgres(workdir / "home" / "pgdata")
    migrate(url)
    summary = import_without_embeddings(mbox, workdir / "home", url)
    engine = engine_for(url)
    claims = _claims(engine)

    embedder = LocalEmbedder(batch_size=batch_size, threads=threads)
    tools = EmbeddingTools(embedder=embedder, tokenizer=load_tokenizer(bundled_model_dir()))
    from sentence_transformers import SentenceTransformer

    embedder.embed(["warm up"])  # loads torch, sets its threads (process-wide), loads the weights
    bare_model = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
    bare_model.eval()
    bare_model.encode(["warm up"], batch_size=batch_size)
    results: list[Round] = []
    for i in range(rounds):
        order = ("stage", "bare") if i % 2 == 0 else ("bare", "stage")
        texts = embedded_texts(engine) if order[0] == "bare" else []
        if order[0] == "bare" and not texts:  # the first bare-first round needs a stage run before it
            run_stage(engine, tools, claims)
            texts = embedded_texts(engine)
        times: dict[str, float] = {}
        chunks = 0
        for which in order:
            if which == "stage":
                times["stage"], chunks = run_stage(engine, tools, claims)
                stage_texts = embedded_texts(engine)
                if texts and sorted(texts) != sorted(stage_texts):
                    raise SystemExit("the stage embedded other texts than the previous round's")
                texts = stage_texts
            else:
                times["bare"] = run_bare(bare_model, texts, batch_size)
        if chunks != len(texts):
            raise SystemExit(f"the stage reported {chunks} embedded chunks but stored {len(texts)} distinct")
        tokens = sum(len(e.ids) for e in tools.tokenizer.encode_batch(texts))
        results.append(Round(first=order[0], chunks=chunks, tokens=tokens,
                             stage_seconds=round(times["stage"], 3), bare_seconds=round(times["bare"], 3)))
        r = results[-1]
        print(f"round {i + 1}/{rounds} ({r.first} first): {r.chunks} chunks, stage {r.stage_seconds} s, "
              f"bare {r.bare_seconds} s, ratio {r.ratio:.3f}", file=sys.stderr, flush=True)
    stage_rate = statistics.median(r.chunks / r.stage_seconds for r in results)
    bare_rate = statistics.median(r.chunks / r.bare_seconds for r in results)
    return {
        "messages": summary["new_messages"],
        "windows": len(claims),
        "batch_size": batch_size,
        "threads": threads,
        "rounds": [{**asdict(r), "ratio": round(r.ratio, 3)} for r in results],
        "median_stage_chunks_per_s": round(stage_rate, 2),
        "median_bare_chunks_per_s": round(bare_rate, 2),
        "median_ratio": round(statistics.median(r.ratio for r in results), 3),
        "ratio_of_medians": round(stage_rate / bare_rate, 3),
        "target": f">= {TARGET}",
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=Settings().embed_batch_size)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (both sides)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="Write the figures into this Markdown file.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = measure(args.messages, args.rounds, args.batch_size, args.threads, args.seed)
    command = (f"python -m bench.embed_throughput --messages {args.messages} --rounds {args.rounds} "
               f"--batch-size {args.batch_size} --threads {args.threads}")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{'round':>5} {'first':>6} {'chunks':>7} {'tokens':>7} {'stage s':>8} {'bare s':>8} {'ratio':>6}")
        for i, r in enumerate(data["rounds"], 1):
            print(f"{i:>5} {r['first']:>6} {r['chunks']:>7} {r['tokens']:>7} {r['stage_seconds']:>8} "
                  f"{r['bare_seconds']:>8} {r['ratio']:>6}")
        print(f"median stage {data['median_stage_chunks_per_s']} chunks/s, bare {data['median_bare_chunks_per_s']} "
              f"chunks/s; median ratio {data['median_ratio']} (target >= {TARGET})")
    if args.report:
        rows = [[str(i), r["first"], str(r["chunks"]), str(r["tokens"]), str(r["stage_seconds"]),
                 str(r["bare_seconds"]), str(r["ratio"])] for i, r in enumerate(data["rounds"], 1)]
        write_section(args.report, "embed-throughput", command,
                      ["round", "first", "chunks", "tokens", "stage s", "bare encode s", "stage/bare"], rows,
                      f"{data['messages']} messages in {data['windows']} windows, batch {data['batch_size']}, "
                      f"{data['threads']} torch threads. Median stage {data['median_stage_chunks_per_s']} chunks/s, "
                      f"bare {data['median_bare_chunks_per_s']} chunks/s; median per-round ratio "
                      f"**{data['median_ratio']}** (target ≥ {TARGET}; ratio of medians {data['ratio_of_medians']}).")
    return 0 if data["median_ratio"] >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
