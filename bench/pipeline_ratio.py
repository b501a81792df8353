"""Pipeline scenario: an import end to end against its slowest stage run alone over the same data.

Three measurements of the same generated mailbox in each round, one after the other:

1. **End to end, with a running worker** (the verdict's): `mailpipe worker` is started on a fresh
   embedded home (its own PostgreSQL and SQL broker, a pool of one process per core) and is ready
   first; then `mailpipe import FILE --json` on that home hands it the windows, every stage of every
   window overlapping as the chains and the driver's back-pressure allow. Workers up before the work
   arrives, as a deployment's are and as the stages' processes below are. The figure is the run's
   own seconds (first window read to last stage done); the command's wall clock is printed beside it.
2. **End to end, one-shot**: the same import on another fresh home with no worker running, so the
   command boots its own pool while its run has started (torch's import, with the local embedder).
3. **Each stage alone**: on another fresh embedded PostgreSQL the file is read into windows by the
   same driver (nothing dispatched: that is the `read` stage, one process as in the CLI), then each
   stage runs over every window before the next starts, with the same stage functions the Celery
   tasks call (`run_stage` with ingest, normalize, contacts, embed, insight) in a pool of as many
   processes as the CLI's workers, each with the workers' torch thread count. Its model is loaded
   before the clock starts. No broker, no chain, no waiting for an upstream: what a stage costs
   when it has the machine to itself.

The verdict is the running worker's run seconds over the slowest stage's (target ≤ 1.15): what
pipelining adds on top of the stage that bounds it; the one-shot import's ratio is reported beside
it. The run over the sum of the stages' seconds says how much the overlap saved. Embeddings are
local MiniLM by default (the pipeline a user runs, embed its slowest stage); `--embedder none`
leaves stages of similar cost that share the same cores, where the run can approach the sum of the
stages, not the slowest one.

    python -m bench pipeline [--size 2000] [--embedder local|none] [--report docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil

from bench.cli_import import ACCOUNT, load_average, run_cli_import, standing_worker
from bench.generate import generate_mbox

STAGE_ORDER = ("ingest", "normalize", "contacts", "embed", "insight")
TARGET = 1.15


@dataclass
class StageTiming:
    stage: str
    seconds: float
    windows: int
    outcomes: dict[str, int]
    processes: int
    machine_busy: float = 0.0  # share of all cores busy while it ran (every process on the machine)
    retries: list[str] = field(default_factory=list)  # errors a window's stage was retried for


def _busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0), sum(t)


def _busy_since(start: tuple[float, float]) -> float:
    busy, total = _busy()
    return round((busy - start[0]) / max(total - start[1], 1e-9), 3)


# ---------------------------------------------------------------- one stage over every window, in a pool

_worker: dict[str, Any] = {}


def _init_worker(url: str, embedder: str, window_size: int, threads: int, profile_dir: str | None) -> None:
    from pipeline.settings import Settings
    from pipeline.stages.embed import tools_for
    from pipeline.stages.insight import insight_tools_for
    from pipeline.storage.db import engine_for

    settings = Settings(database_url=url, broker_url=None, embedder=cast(Any, embedder), window_size=window_size,
                        ai_base_url=None)
    engine = engine_for(url, pool_size=2)
    tools = tools_for(settings, engine, threads=threads)
    if tools is not None:
        tools.embedder.embed(["warm the model up before any clock starts"])
    _worker.update(settings=settings, engine=engine, embed_tools=tools,
                   insight_tools=insight_tools_for(settings, engine), profile_dir=profile_dir, profiles={})


def _ready(_: int) -> int:
    time.sleep(0.5)  # held long enough that each of the pool's processes takes one of these
    return os.getpid()


def _stage_work(stage: str) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    from pipeline.stages.contacts import contacts_window
    from pipeline.stages.embed import embed_pending
    from pipeline.stages.ingest import ingest_window
    from pipeline.stages.insight import insight_pending, insight_window, mark_insights
    from pipeline.stages.normalize import normalize_window

    engine, settings = _worker["engine"], _worker["settings"]
    if stage == "ingest":
        return ingest_window, None
    if stage == "normalize":
        return normalize_window, None
    if stage == "contacts":
        return (lambda s, c: contacts_window(s, c, settings)), None
    if stage == "embed":
        tools = _worker["embed_tools"]
        return (lambda s, c: {}), (lambda claim: embed_pending(engine, claim, tools))
    tools = _worker["insight_tools"]
    if tools.llm is None:
        return insight_window, None
    return mark_insights, (lambda claim: insight_pending(engine, claim, tools))


RETRIES = 8


def _run_one(args: tuple[str, int]) -> tuple[str, list[str]]:
    """One stage of one window, as the stage's Celery task runs it (minus publishing its successors): its
    outcome, and the errors it was retried for (a task would retry them after a backoff; so does this)."""
    from pipeline.runs import claim_stage, skip_stage
    from pipeline.stages.runner import StageNotReady, StageRetry, run_stage

    stage, window_id = args
    engine, settings = _worker["engine"], _worker["settings"]
    profiler = cProfile.Profile() if _worker["profile_dir"] else None
    if profiler:
        profiler.enable()
    retried: list[str] = []
    try:
        if stage == "embed" and _worker["embed_tools"] is None:
            claim = claim_stage(engine, window_id, "embed")  # what the embed task does with embedder none
            if claim is not None:
                skip_stage(engine, claim, "embed")
            return "skipped", retried
        work, prepare = _stage_work(stage)
        for attempt in range(RETRIES + 1):
            try:
                return run_stage(engine, settings, window_id, stage, work, prepare=prepare,
                                 final_try=attempt == RETRIES).outcome, retried
            except (StageRetry, StageNotReady) as exc:  # not picklable: never let one leave the process
                retried.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                time.sleep(0.2 * (attempt + 1))
        return "failed", retried
    finally:
        if profiler:
            profiler.disable()
            _worker["profiles"].setdefault(stage, []).append(profiler)


def _dump_profiles(_: int) -> int:
    import pstats

    time.sleep(0.5)  # as _ready: one call per process
    folder = _worker["profile_dir"]
    for stage, profilers in _worker["profiles"].items():
        stats = pstats.Stats(profilers[0])
        for p in profilers[1:]:
            stats.add(p)
        stats.dump_stats(os.path.join(folder, f"{stage}-{os.getpid()}.prof"))
    return os.getpid()


def stages_alone(mbox: Path, workdir: Path, *, processes: int, embedder: str, window_size: int,
                 profile_dir: Path | None = None, log: Callable[[str], None] = print) -> list[StageTiming]:
    """Read `mbox` into windows, then run each stage over all of them alone; the seconds each took."""
    from sqlalchemy import text

    from pipeline.driver import DriveOptions, Driver
    from pipeline.runs import begin_run, ensure_account
    from pipeline.sources.mbox import iter_messages, open_mbox
    from pipeline.storage.db import engine_for, migrate
    from pipeline.storage.embedded import start_embedded_postgres, stop_embedded_postgres

    url = start_embedded_postgres(workdir / "pgdata")
    migrate(url)
    engine = engine_for(url)
    account_id = ensure_account(engine, ACCOUNT, {ACCOUNT})
    run_id = begin_run(engine, account_id, "import", str(mbox), 3600)
    timings: list[StageTiming] = []
    started = time.monotonic()
    # The driver's own loop (save each window, then "dispatch"), with nothing dispatched and no back-pressure.
    driver = Driver(engine, run_id, DriveOptions(window_size=window_size, windows_in_flight=10**9),
                    dispatch=lambda _wid: None)
    entries = driver.feed(iter_messages(open_mbox(mbox)))
    with engine.connect() as conn:
        window_ids = [int(w) for w in conn.execute(
            text("SELECT id FROM windows WHERE run_id = :r ORDER BY seq"), {"r": run_id}).scalars()]
    timings.append(StageTiming("read", round(time.monotonic() - started, 2), len(window_ids),
                               {"entries": entries}, 1))
    log(f"  read: {timings[-1].seconds} s, {len(window_ids)} windows")
    threads = max(1, (os.cpu_count() or 1) // processes)  # what tasks.context gives each worker child
    # A process that dies breaks the executor (BrokenProcessPool) instead of hanging a multiprocessing.Pool.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(url, embedder, window_size, threads,
                                       str(profile_dir) if profile_dir else None)) as pool:
        pids = set(pool.map(_ready, range(processes)))  # every process initialised, its model loaded
        if len(pids) != processes:
            log(f"  warning: {len(pids)} of {processes} processes answered before the clock started")
        for stage in STAGE_ORDER:
            t0, b0 = time.monotonic(), _busy()
            outcomes: dict[str, int] = {}
            retries: list[str] = []
            for outcome, retried in pool.map(_run_one, [(stage, w) for w in window_ids]):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                retries += retried
            timings.append(StageTiming(stage, round(time.monotonic() - t0, 2), len(window_ids), outcomes, processes,
                                       _busy_since(b0), retries))
            if retries:
                log(f"  {stage}: {len(retries)} retried error(s), e.g. {retries[0]}")
            log(f"  {stage}: {timings[-1].seconds} s {outcomes}")
        if profile_dir:
            for _ in pool.map(_dump_profiles, range(processes)):
                pass
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM sync_runs WHERE id = :r"), {"r": run_id}).scalar_one()
    engine.dispose()
    stop_embedded_postgres(workdir / "pgdata")
    if status != "done":
        raise RuntimeError(f"the stage-by-stage run ended {status}, not done")
    return timings


# ---------------------------------------------------------------- the scenario


def _e2e_figures(e2e: Any, slowest: float, total: float) -> dict[str, Any]:
    span = e2e.timeline.get("tasks_span")
    return {
        "run_seconds": e2e.run_seconds, "command_seconds": e2e.wall_seconds, "summary": e2e.summary,
        "cpu_seconds": e2e.cpu_seconds, "machine_busy": e2e.machine_busy, "load_before": e2e.load_before,
        "load_after": e2e.load_after, "timeline": e2e.timeline,
        "ratio": round(e2e.run_seconds / slowest, 3) if slowest else None,
        "ratio_to_sum": round(e2e.run_seconds / total, 3) if total else None,
        "command_ratio": round(e2e.wall_seconds / slowest, 3) if slowest else None,
        # The pool's first task to its last, over the slowest stage: the run without waiting for the pool.
        "tasks_span_ratio": round(span / slowest, 3) if span and slowest else None,
    }


def _round(mbox: Path, work: Path, *, size: int, embedder: str, processes: int, window_size: int,
           stages_first: bool, profile_dir: Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Over the same file: the stages alone, an import handed to a running `mailpipe worker`, and a
    one-shot import booting its own pool; the stages first or last, the running worker's import always
    next to them (the machine's load drifts)."""
    def checked(e2e: Any, what: str) -> Any:
        if e2e.returncode != 0 or e2e.summary.get("status") != "done":
            raise RuntimeError(f"the {what} import failed: {e2e.summary}")
        log(f"  run {e2e.run_seconds} s (command {e2e.wall_seconds} s)")
        return e2e

    def one_shot() -> Any:
        log(f"end to end, one-shot: mailpipe import of {size} messages, embedder {embedder}, {processes} "
            "worker processes of its own")
        return checked(run_cli_import(mbox, work / "home-e2e", timeline=True, embedder=embedder,
                                      window_size=str(window_size), worker_concurrency=str(processes)), "one-shot")

    def standing() -> Any:
        log(f"end to end, running worker: mailpipe worker booted, then mailpipe import of {size} messages")
        home = work / "home-standing"
        with standing_worker(home, embedder=embedder, window_size=str(window_size),
                             worker_concurrency=str(processes)) as worker:
            return checked(run_cli_import(mbox, home, timeline=True, standing=worker, embedder=embedder,
                                          window_size=str(window_size), worker_concurrency=str(processes)),
                           "standing")

    def alone() -> tuple[list[StageTiming], float, float]:
        log(f"each stage alone over the same {size} messages, {processes} processes")
        before = load_average()
        timings = stages_alone(mbox, work / "stages", processes=processes, embedder=embedder,
                               window_size=window_size, profile_dir=profile_dir, log=log)
        return timings, before, load_average()

    if stages_first:
        (timings, load_before, load_after), held, own = alone(), standing(), one_shot()
    else:
        own, held, (timings, load_before, load_after) = one_shot(), standing(), alone()
    slowest = max(timings, key=lambda t: t.seconds)
    total = round(sum(t.seconds for t in timings), 2)
    running = _e2e_figures(held, slowest.seconds, total)
    return {
        "first": "stages" if stages_first else "end to end",
        "end_to_end": running,  # the verdict's: workers up before the work, as the stages' processes are
        "one_shot": _e2e_figures(own, slowest.seconds, total),
        "stages": [asdict(t) for t in timings],
        "stages_load_before": load_before, "stages_load_after": load_after,
        "slowest_stage": slowest.stage, "slowest_seconds": slowest.seconds, "sum_of_stages": total,
        "ratio": running["ratio"], "ratio_to_sum": running["ratio_to_sum"],
        "command_ratio": running["command_ratio"], "tasks_span_ratio": running["tasks_span_ratio"],
        # What the stages cost together over the slowest stage.
        "sum_over_slowest": round(total / slowest.seconds, 3) if slowest.seconds else None,
    }


def measure(size: int, *, seed: int = 1, embedder: str = "local", processes: int | None = None,
            window_size: int = 200, rounds: int = 1, workdir: Path | None = None, profile_dir: Path | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """`rounds` rounds, alternating which half goes first (the machine is shared: its load drifts); the
    verdict is the median round's ratio. The top-level figures are that round's."""
    processes = processes or os.cpu_count() or 1
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mailpipe-bench-pipeline-")) if workdir is None else workdir
    results: list[dict[str, Any]] = []
    try:
        mbox = work / f"gen-{size}-{seed}.mbox"
        if not mbox.exists():
            generate_mbox(mbox, size, seed=seed, account=ACCOUNT)
        for i in range(rounds):
            log(f"round {i + 1} of {rounds}")
            folder = work / f"round-{i + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            results.append(_round(mbox, folder, size=size, embedder=embedder, processes=processes,
                                  window_size=window_size, stages_first=bool(i % 2), profile_dir=profile_dir,
                                  log=log))
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    ordered = sorted(results, key=lambda r: r["ratio"] if r["ratio"] is not None else float("inf"))
    median = ordered[len(ordered) // 2]  # of an even count, the upper (worse) of the middle two
    return {
        "messages": size, "seed": seed, "embedder": embedder, "processes": processes, "window_size": window_size,
        **median,
        "rounds": results,
        "round_ratios": [r["ratio"] for r in results],
        "one_shot_round_ratios": [r["one_shot"]["ratio"] for r in results],
        "target": f"<= {TARGET}",
    }


def print_table(data: dict[str, Any]) -> None:
    e2e = data["end_to_end"]
    print(f"{'stage':<12} {'seconds':>8} {'windows':>8} {'busy':>5}  outcomes")
    for t in data["stages"]:
        print(f"{t['stage']:<12} {t['seconds']:>8} {t['windows']:>8} {t['machine_busy']:>5}  {t['outcomes']}")
    print(f"{'sum':<12} {data['sum_of_stages']:>8}")
    print(f"end to end: run {e2e['run_seconds']} s, command {e2e['command_seconds']} s "
          f"(load {e2e['load_before']} -> {e2e['load_after']})")
    print(f"run / slowest stage ({data['slowest_stage']}) = {data['ratio']} (target {data['target']}); "
          f"run / sum of stages = {data['ratio_to_sum']}")
    print(f"rounds (run / slowest stage): {data['round_ratios']}, median {data['ratio']}")
    t = e2e.get("timeline") or {}
    print(f"with a running worker: tasks from {t.get('first_task_after')} to {t.get('last_task_after')} s after the "
          f"command started: span / slowest stage = {data['tasks_span_ratio']}; sum of stages / slowest = "
          f"{data['sum_over_slowest']}")
    own = data["one_shot"]
    t = own.get("timeline") or {}
    print(f"one-shot import (its own pool): run {own['run_seconds']} s, command {own['command_seconds']} s, run / "
          f"slowest stage = {own['ratio']} (rounds {data['one_shot_round_ratios']}); its pool was ready "
          f"{t.get('ready_after')} s after the command started, tasks span / slowest = {own['tasks_span_ratio']}")


def report(path: Path, data: dict[str, Any], command: str) -> None:
    from bench.report import write_section

    e2e = data["end_to_end"]
    rows = [[t["stage"], str(t["seconds"]), str(t["windows"]), f"{100 * t['machine_busy']:.0f}%",
             ", ".join(f"{k} {v}" for k, v in sorted(t["outcomes"].items()))
             + (f"; {len(t['retries'])} retried: {t['retries'][0]}" if t.get("retries") else "")]
            for t in data["stages"]]
    rows.append(["**sum of stages**", str(data["sum_of_stages"]), "", "", ""])
    t = e2e.get("timeline") or {}
    rows.append(["**end to end, running worker (run)**", f"**{e2e['run_seconds']}**", "",
                 f"{100 * e2e['machine_busy']:.0f}%",
                 f"`mailpipe import` handed its windows to a `mailpipe worker` booted before it; command "
                 f"{e2e['command_seconds']} s; tasks ran from {t.get('first_task_after')} to "
                 f"{t.get('last_task_after')} s after the command started (span {t.get('tasks_span')} s)"])
    own = data["one_shot"]
    t = own.get("timeline") or {}
    rows.append(["end to end, one-shot (run)", str(own["run_seconds"]), "", f"{100 * own['machine_busy']:.0f}%",
                 f"`mailpipe import` with a pool of its own: command {own['command_seconds']} s with start-up "
                 f"and shutdown; the pool was ready {t.get('ready_after')} s after the command started, its "
                 f"tasks ran from {t.get('first_task_after')} to {t.get('last_task_after')} s (span "
                 f"{t.get('tasks_span')} s)"])
    met = data["ratio"] is not None and data["ratio"] <= TARGET
    own_met = own["ratio"] is not None and own["ratio"] <= TARGET
    cpu = e2e["cpu_seconds"]
    verdict = (
        f"{data['messages']:,} generated messages (seed {data['seed']}), windows of {data['window_size']}, "
        f"embedder `{data['embedder']}`, {data['processes']} worker processes, {len(data['rounds'])} round(s) "
        f"alternating which half ran first (the table is the median round, where {data['first']} ran first). "
        f"**With a running `mailpipe worker`** (workers up before the work arrives, as a deployment's are and "
        f"as the stages' processes are, their model loaded before the clock), the run over its slowest stage "
        f"({data['slowest_stage']}), per round: {data['round_ratios']}, median **{data['ratio']}** (target ≤ "
        f"{TARGET}: {'met' if met else 'NOT met'}); in the median round over the sum of the stages run one "
        f"after the other: {data['ratio_to_sum']}; the command's wall clock over the slowest stage: "
        f"{data['command_ratio']}; the workers' first task to their last over the slowest stage: "
        f"{data['tasks_span_ratio']}, against {data['sum_over_slowest']} for the sum of the stages over the "
        f"slowest (overlapping stages only saves time where a stage alone leaves cores idle: the machine-busy "
        f"column says how much each left). **A one-shot `mailpipe import`**, which boots its own pool (torch's "
        f"import) while its run has started: per round {data['one_shot_round_ratios']}, "
        f"{own['ratio']} in the median round ({'met' if own_met else 'NOT met'}); its command's wall clock "
        f"over the slowest stage {own['command_ratio']}. CPU of the running worker's import: CLI and "
        f"workers {cpu.get('cli and workers')} s, PostgreSQL {cpu.get('postgres')} s; the machine was "
        f"{100 * e2e['machine_busy']:.0f}% busy. Load average (1 min): {e2e['load_before']} → "
        f"{e2e['load_after']} around that import, {data['stages_load_before']} → {data['stages_load_after']} "
        f"around the stages. **Method:** the end-to-end figures are `mailpipe import FILE --json` through "
        "the CLI on a fresh embedded home (its own PostgreSQL and SQL broker), timed by the run itself: once "
        "with `mailpipe worker` started on that home and ready first, once with the pool the command starts "
        "for itself; for the stages alone, on another fresh PostgreSQL, the same file is read into windows by "
        "the same driver with nothing dispatched (`read`), and each stage runs over every window before the "
        "next starts, with the stage functions the Celery tasks call, in a pool of as many processes as the "
        "CLI's workers (same torch threads, model loaded before the clock). No broker, no chain, no "
        "upstream to wait for."
    )
    write_section(path, f"pipeline-{data['embedder']}", command,
                  ["stage", "seconds", "windows", "machine busy", "outcomes"],
                  rows, verdict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2000, help="messages in the generated mailbox")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--embedder", choices=["local", "none"], default="local")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: cores)")
    parser.add_argument("--window-size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="end to end and stages alone, alternating which "
                        "goes first; the median round is reported")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile per stage and process here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="write the figures into this Markdown file")
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    quiet = args.json
    data = measure(args.size, seed=args.seed, embedder=args.embedder, processes=args.processes,
                   window_size=args.window_size, rounds=args.rounds, profile_dir=args.profile,
                   log=(lambda _m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_table(data)
    if args.report:
        command = (f"python -m bench pipeline --size {args.size} --embedder {args.embedder}"
                   + (f" --processes {args.processes}" if args.processes else "")
                   + (f" --window-size {args.window_size}" if args.window_size != 200 else "")
                   + f" --rounds {args.rounds}")
        report(args.report, data, command)
    return 0 if data["ratio"] is not None and data["ratio"] <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
