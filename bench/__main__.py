"""`python -m bench SCENARIO [--size N] [options]`: one entry point for every benchmark scenario.

    python -m bench --list                      the scenarios and what each measures
    python -m bench backfill --size 10000 --report docs/PERFORMANCE.md
    python -m bench SCENARIO --help             the scenario's own options

Each scenario is a module of this package with a `main(argv)`; it prints a table and, with
`--report FILE`, writes its figures, the machine and the exact command into FILE
(`bench.report.write_section`). `--size N` is translated into the scenario's own size option where
its name differs; everything else is passed through unchanged. A scenario whose module is not there
(one being written on another branch) is listed as missing instead of breaking the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    module: str  # under bench/
    summary: str
    size_option: str | None = "--size"  # what `--size N` becomes; None: the scenario takes no size
    size_values: Callable[[str], list[str]] | None = None  # `--size N` as several values (e.g. two sizes)

    def available(self) -> bool:
        return importlib.util.find_spec(f"bench.{self.module}") is not None

    def translate(self, argv: Sequence[str]) -> list[str]:
        out: list[str] = []
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            value: str | None = None
            if arg == "--size" and i + 1 < len(args):
                value, i = args[i + 1], i + 2
            elif arg.startswith("--size="):
                value, i = arg.split("=", 1)[1], i + 1
            else:
                out.append(arg)
                i += 1
                continue
            if self.size_option is None:
                raise SystemExit(f"bench {self.name}: takes no --size")
            out += [self.size_option, *(self.size_values(value) if self.size_values else [value])]
        return out


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("memory", "memory", "worker peak RSS importing N and 10N messages through the CLI (target ≤ 1.10)",
             "--sizes", lambda n: [n, str(10 * int(n))]),
    Scenario("ingest-quota", "gmail_quota", "Gmail full syncs at the per-user quota ceiling (target ≥ 0.95)",
             "--messages"),
    Scenario("chaos", "chaos", "a Gmail sync while workers are killed and Redis/PostgreSQL restart", "--messages"),
    Scenario("search", "search", "search latency at 100k and recall@10 (needs --part latency|quality)",
             "--messages"),
    Scenario("embed", "embed_throughput", "the embed stage against a bare MiniLM encode (target ≥ 0.9)",
             "--messages"),
    Scenario("backfill", "backfill", "mbox import through the CLI against a bare stdlib parse (target ≥ 0.5)"),
    Scenario("pipeline", "pipeline_ratio", "an import end to end against its slowest stage alone (target ≤ 1.15)"),
    Scenario("hierarchy", "hierarchy", "5×20, 10×50, 15×100 runs × windows on Celery/Redis: completion, "
             "integrity, lock errors, throughput scaling"),
    Scenario("db-scale", "db_scale", "1M messages over 100 accounts: every hot query's plan and p95 (target ≤ 10 ms)",
             "--messages"),
    Scenario("webhook", "webhook", "open-loop load on the sync web hook (target p95 ≤ 100 ms at 300/s, 1 run)",
             "--rate"),
    Scenario("api-scale", "api_scale", "the web API's read endpoints on a populated database (target p95 ≤ 10 ms)",
             None),
    Scenario("replacement", "replacement", "the idle core while a prefork pool replaces a grown child: "
             "billiard's pool against mailpipe's", "--tasks"),
    Scenario("replies", "eval_replies", "quote and signature stripping on real reply bodies", None),
)}


def describe() -> str:
    width = max(len(n) for n in SCENARIOS)
    lines = []
    for s in SCENARIOS.values():
        state = "" if s.available() else "  [missing: bench/" + s.module + ".py is not on this branch]"
        lines.append(f"{s.name:<{width}}  {s.summary}{state}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nScenarios:\n" + describe())
        return 0 if args else 2
    if args[0] == "--list":
        print(describe())
        return 0
    name, rest = args[0], args[1:]
    scenario = SCENARIOS.get(name) or next((s for s in SCENARIOS.values() if s.module == name), None)
    if scenario is None:
        print(f"bench: unknown scenario {name!r}; `python -m bench --list` names them", file=sys.stderr)
        return 2
    if not scenario.available():
        print(f"bench: scenario {scenario.name!r} needs bench/{scenario.module}.py, which is not on this branch",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{scenario.module}")
    result = module.main(scenario.translate(rest))
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
