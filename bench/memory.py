"""Memory scenario: a worker's peak RSS importing a small and a 10x larger generated mailbox.

Both imports run in the same invocation, each on a fresh embedded home, through the real CLI on the
embedded default (its own PostgreSQL and worker pool). A sampler polls every celery process under
the CLI and keeps the peak RSS of the largest single process and of the whole pool.

    python -m bench.memory --sizes 2000 20000 [--json] [--report docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.generate import generate_mbox
from bench.report import write_section


@dataclass
class MemoryResult:
    messages: int
    seconds: float
    peak_process_mib: float
    peak_pool_mib: float
    new_messages: int
    chunks_embedded: int


def _sample(cli: psutil.Process, stop: threading.Event, peaks: dict[str, float]) -> None:
    while not stop.is_set():
        try:
            # The CLI's pool (`python -m tasks.workers`, tasks.workers.WorkerPool) and its children.
            procs = [p for p in cli.children(recursive=True) if "tasks.workers" in " ".join(p.cmdline())]
            rss = [p.memory_info().rss for p in procs]
        except psutil.Error:
            rss = []
        if rss:
            peaks["process"] = max(peaks["process"], max(rss))
            peaks["pool"] = max(peaks["pool"], sum(rss))
        stop.wait(0.2)


def measure(size: int, workdir: Path, seed: int) -> MemoryResult:
    mbox = workdir / f"gen-{size}.mbox"
    generate_mbox(mbox, size, seed=seed)
    home = workdir / f"home-{size}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env.update({"MAILPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "import", str(mbox), "--account", "me@example.com", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peaks = {"process": 0.0, "pool": 0.0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(psutil.Process(proc.pid), stop, peaks), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    try:
        summary = json.loads(out)
    except ValueError:
        raise SystemExit(f"import of {size} messages failed ({proc.returncode}): {err[-2000:]}") from None
    if proc.returncode != 0:
        # Keep the figures, but say what failed: the worker log is about to be deleted with the home.
        log = (home / "logs" / "worker.log")
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        print(f"import of {size} messages ended {summary.get('status')} with failures: "
              f"{json.dumps(summary)}\n{tail}", file=sys.stderr)
    return MemoryResult(
        messages=size,
        seconds=round(time.monotonic() - started, 1),
        peak_process_mib=round(peaks["process"] / 2**20, 1),
        peak_pool_mib=round(peaks["pool"] / 2**20, 1),
        new_messages=summary["new_messages"],
        chunks_embedded=summary["chunks_embedded"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="Write the figures into this Markdown file.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as tmp:
        results = [measure(size, Path(tmp), args.seed) for size in args.sizes]
    small, large = results
    ratio = round(large.peak_process_mib / small.peak_process_mib, 3)
    pool_ratio = round(large.peak_pool_mib / small.peak_pool_mib, 3)
    data = {"results": [asdict(r) for r in results], "peak_process_ratio": ratio, "peak_pool_ratio": pool_ratio,
            "target": "<= 1.10", "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    command = "python -m bench.memory --sizes " + " ".join(map(str, args.sizes))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{'messages':>9} {'seconds':>8} {'peak worker MiB':>16} {'peak pool MiB':>14} {'chunks':>8}")
        for r in results:
            print(f"{r.messages:>9} {r.seconds:>8} {r.peak_process_mib:>16} {r.peak_pool_mib:>14} "
                  f"{r.chunks_embedded:>8}")
        print(f"peak worker ratio {ratio} (target <= 1.10), pool ratio {pool_ratio}")
    if args.report:
        rows = [[str(r.messages), str(r.seconds), str(r.peak_process_mib), str(r.peak_pool_mib),
                 str(r.chunks_embedded)] for r in results]
        write_section(args.report, "memory", command,
                      ["messages", "seconds", "peak worker process MiB", "peak pool MiB", "chunks embedded"],
                      rows, f"Peak worker RSS ratio {ratio} (target ≤ 1.10); whole pool ratio {pool_ratio}.")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
