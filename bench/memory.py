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
import statistics
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
    # Each pool child's own peak (a child is replaced once it has grown, so a larger mailbox has more
    # of them): how many were seen, and the median of their peaks; the pool's parent's peak.
    children: int = 0
    child_median_mib: float = 0.0
    parent_mib: float = 0.0


def _sample(cli: psutil.Process, stop: threading.Event, peaks: dict[str, float],
            by_pid: dict[int, float], parents: set[int]) -> None:
    """Every 0.2 s: each pool process's peak (`by_pid`), the pool's largest total (`peaks["pool"]`)."""
    while not stop.is_set():
        try:
            # The CLI's pool (`python -m tasks.workers`, tasks.workers.WorkerPool) and its children.
            procs = [p for p in cli.children(recursive=True) if "tasks.workers" in " ".join(p.cmdline())]
            rss = {p.pid: p.memory_info().rss for p in procs}
            parents.update(p.pid for p in procs if p.ppid() == cli.pid)
        except psutil.Error:
            rss = {}
        if rss:
            peaks["pool"] = max(peaks["pool"], sum(rss.values()))
            for pid, value in rss.items():
                by_pid[pid] = max(by_pid.get(pid, 0.0), value)
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
    peaks = {"pool": 0.0}
    by_pid: dict[int, float] = {}
    parents: set[int] = set()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(psutil.Process(proc.pid), stop, peaks, by_pid, parents),
                               daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    try:
        summary = json.loads(out)
    except ValueError:
        raise SystemExit(f"import of {size} messages failed ({proc.returncode}): {err[-2000:]}") from None
    children = [v for pid, v in by_pid.items() if pid not in parents]
    if proc.returncode != 0:
        # Keep the figures, but say what failed: the worker log is about to be deleted with the home.
        log = (home / "logs" / "worker.log")
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        print(f"import of {size} messages ended {summary.get('status')} with failures: "
              f"{json.dumps(summary)}\n{tail}", file=sys.stderr)
    return MemoryResult(
        messages=size,
        seconds=round(time.monotonic() - started, 1),
        peak_process_mib=round(max(by_pid.values(), default=0.0) / 2**20, 1),
        peak_pool_mib=round(peaks["pool"] / 2**20, 1),
        new_messages=summary["new_messages"],
        chunks_embedded=summary["chunks_embedded"],
        children=len(children),
        child_median_mib=round(statistics.median(children) / 2**20, 1) if children else 0.0,
        parent_mib=round(max((v for pid, v in by_pid.items() if pid in parents), default=0.0) / 2**20, 1),
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
        print(f"{'messages':>9} {'seconds':>8} {'peak worker MiB':>16} {'peak pool MiB':>14} {'chunks':>8} "
              f"{'children':>9} {'child median MiB':>17} {'parent MiB':>11}")
        for r in results:
            print(f"{r.messages:>9} {r.seconds:>8} {r.peak_process_mib:>16} {r.peak_pool_mib:>14} "
                  f"{r.chunks_embedded:>8} {r.children:>9} {r.child_median_mib:>17} {r.parent_mib:>11}")
        print(f"peak worker ratio {ratio} (target <= 1.10), pool ratio {pool_ratio}")
    if args.report:
        rows = [[str(r.messages), str(r.seconds), str(r.peak_process_mib), str(r.peak_pool_mib),
                 str(r.chunks_embedded), str(r.children), str(r.child_median_mib), str(r.parent_mib)]
                for r in results]
        median_ratio = round(large.child_median_mib / small.child_median_mib, 3) if small.child_median_mib else None
        write_section(args.report, "memory", command,
                      ["messages", "seconds", "peak worker process MiB", "peak pool MiB", "chunks embedded",
                       "pool children seen", "median child's peak MiB", "pool parent's peak MiB"],
                      rows, f"Peak worker RSS ratio {ratio} (target ≤ 1.10); whole pool ratio {pool_ratio}. "
                      "A pool child is replaced once it has grown past a limit since its model loaded, "
                      "read after it has handed its freed heap back (tasks.child_memory); pool children seen: "
                      f"{small.children} and {large.children}. Where the larger import has more children, its "
                      "largest peak is the largest of more of them (sampled every 0.2 s; the parent, which runs "
                      f"no task, apart): the median child's peak, ratio {median_ratio}.")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
