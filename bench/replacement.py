"""Child replacement scenario: how long a prefork pool leaves its core idle when it replaces a child.

With the local embedder a worker's children are replaced once they have grown (tasks.child_memory),
after about every embed task: 5 to 8 times in a 2k import, each time with one of two cores idle from
the replaced child's last result to its successor's first task. This measures that gap alone, side
by side: a billiard pool of one process whose every child outgrows its bound (1 KiB) after one task
runs TASKS trivial tasks back to back, so each task after the first waits for one replacement.

- `billiard`: billiard's pool as it comes;
- `mailpipe`: the same pool in a process that imported `tasks` (tasks.prefork installed, as in every
  worker): the replaced child waits for its last result to be read in short steps, and the
  supervisor, woken when a child says it is leaving, looks for it in short steps.

Each round runs both, each part in a fresh process, alternating which goes first. The figure is seconds
per replacement (the median over rounds), and what the pool costs when idle: its process's CPU share
while two children sit idle for IDLE seconds.

    python -m bench.replacement --tasks 40 --rounds 5 [--idle 5] [--json] [--report docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.cpu import own_cpu_seconds
from bench.report import write_section

VARIANTS = ("billiard", "mailpipe")
PARTS = {"replacement": "seconds_per_replacement", "idle": "idle_cpu_percent"}  # part: its figure


def _trivial(i: int) -> int:
    return i


def measure_variant(variant: str, part: str, tasks: int, idle: float) -> float:
    """One part of one variant, in this process: a fresh one for each, since installing the clock cannot be
    undone and a pool that has closed leaves it closing (every later sleep in the process short)."""
    if variant == "mailpipe":
        import tasks as _tasks  # noqa: F401  (tasks.app installs tasks.prefork, as every worker does)
    from billiard import pool as billiard_pool

    if part == "replacement":
        pool = billiard_pool.Pool(processes=1, max_memory_per_child=1)
        try:
            pool.apply_async(_trivial, (0,)).get(timeout=60)  # the first child: started, not replaced yet
            started = time.perf_counter()
            for i in range(tasks):
                pool.apply_async(_trivial, (i,)).get(timeout=60)
            return (time.perf_counter() - started) / tasks
        finally:
            pool.terminate()
    idle_pool = billiard_pool.Pool(processes=2)  # no bound: its children stay
    try:
        idle_pool.apply_async(_trivial, (0,)).get(timeout=60)
        cpu0, t0 = own_cpu_seconds(), time.perf_counter()
        time.sleep(idle)
        cpu1, t1 = own_cpu_seconds(), time.perf_counter()
    finally:
        idle_pool.terminate()
    return 100 * (cpu1 - cpu0) / (t1 - t0)


def _run_variant(variant: str, tasks: int, idle: float) -> dict[str, float]:
    result: dict[str, float] = {}
    for part, key in PARTS.items():
        proc = subprocess.run([sys.executable, "-m", "bench.replacement", "--variant", variant, "--part", part,
                               "--tasks", str(tasks), "--idle", str(idle)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"the {variant} {part} run failed ({proc.returncode}): {proc.stderr[-3000:]}")
        result[key] = float(proc.stdout.strip().splitlines()[-1])
    return result


def measure(tasks: int, rounds: int, idle: float) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            results[variant].append(_run_variant(variant, tasks, idle))
        print(f"round {i + 1}/{rounds}: " + ", ".join(
            f"{v} {results[v][-1]['seconds_per_replacement'] * 1000:.1f} ms" for v in VARIANTS),
            file=sys.stderr, flush=True)
    summary = {v: {"median_ms_per_replacement": round(1000 * statistics.median(
                       r["seconds_per_replacement"] for r in results[v]), 1),
                   "median_idle_cpu_percent": round(statistics.median(r["idle_cpu_percent"] for r in results[v]), 2),
                   "rounds_ms": [round(1000 * r["seconds_per_replacement"], 1) for r in results[v]]}
               for v in VARIANTS}
    return {"tasks": tasks, "rounds": rounds, "idle_seconds": idle, "variants": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40, help="replacements measured per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of an idle pool, for the supervisor's cost")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one part, in its own process
    parser.add_argument("--part", choices=tuple(PARTS), default="replacement", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="Write the figures into this Markdown file.")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.rounds < 1 or args.idle <= 0:
        parser.error("--tasks and --rounds must be at least 1, --idle above 0")
    if args.variant:
        print(measure_variant(args.variant, args.part, args.tasks, args.idle))
        return 0
    data = measure(args.tasks, args.rounds, args.idle)
    command = f"python -m bench.replacement --tasks {args.tasks} --rounds {args.rounds} --idle {args.idle:g}"
    v = data["variants"]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{'variant':>9} {'ms/replacement':>15} {'idle pool CPU %':>16}  rounds (ms)")
        for name in VARIANTS:
            print(f"{name:>9} {v[name]['median_ms_per_replacement']:>15} {v[name]['median_idle_cpu_percent']:>16}  "
                  f"{v[name]['rounds_ms']}")
    if args.report:
        rows = [[name, str(v[name]["median_ms_per_replacement"]), " / ".join(map(str, v[name]["rounds_ms"])),
                 str(v[name]["median_idle_cpu_percent"])] for name in VARIANTS]
        saved = v["billiard"]["median_ms_per_replacement"] - v["mailpipe"]["median_ms_per_replacement"]
        write_section(args.report, "replacement", command,
                      ["pool", "ms per replacement (median)", "rounds", "idle pool's process CPU %"], rows,
                      f"{args.tasks} replacements per run, {args.rounds} rounds alternating which pool ran first, each "
                      f"measurement in a fresh process. mailpipe's pool leaves a core idle **{saved:.1f} ms** less per "
                      f"replaced child. Idle, its pool's process took {v['mailpipe']['median_idle_cpu_percent']}% "
                      f"of a core against billiard's {v['billiard']['median_idle_cpu_percent']}%.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
