"""Where a scenario's CPU went: seconds per process group and how busy the whole machine was.

A scenario that falls short of a throughput target on this 2-core machine has to say whether the
CPU was the limit, and whose CPU it was (mailpipe's workers, PostgreSQL, the test servers, the
bench's own driver). Groups are named process trees; a tree's time is its live processes' own
time plus what its members' reaped children used (children that exited are accounted to their
parent by the kernel), read at the start and at the end of the measured span.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

Roots = Callable[[], Iterable[int]]  # the pids at the top of a group's trees, read when measured


@dataclass(frozen=True, slots=True)
class CpuFigures:
    seconds: float  # wall clock of the span
    cores: int
    machine_busy: float  # share of all cores' time not idle or waiting for I/O, every process on the machine
    by_group: dict[str, float]  # CPU seconds per group over the span

    def busy_cores(self, group: str) -> float:
        return self.by_group.get(group, 0.0) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"seconds": round(self.seconds, 1), "cores": self.cores, "machine_busy": round(self.machine_busy, 3),
                "cpu_seconds": {k: round(v, 1) for k, v in self.by_group.items()}}


def tree_cpu_seconds(root_pids: Iterable[int], *, include_self: bool = True) -> float:
    """CPU seconds of these processes' trees: live members' own time plus their reaped children's.

    include_self=False leaves the roots' own and reaped-children time out (for the bench process,
    whose children are other groups)."""
    total = 0.0
    seen: set[int] = set()
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in members:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if proc.pid == pid and not include_self:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu_seconds() -> float:
    """This process's own CPU time (its threads), not its children's."""
    t = psutil.Process(os.getpid()).cpu_times()
    return t.user + t.system


def postmaster_pid(pgdata: Path) -> list[int]:
    """The embedded PostgreSQL's postmaster, from its pid file (empty when it is not running)."""
    try:
        return [int((pgdata / "postmaster.pid").read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


def pids_named(name: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


class CpuMeter:
    """Start, run the scenario, stop: CPU seconds per group and the machine's busy share in between.

    `groups` maps a group's name to a function returning its root pids; the special group of the
    bench process itself is measured with `own_cpu_seconds` (its children are other groups).
    """

    def __init__(self, groups: dict[str, Roots], *, this_process: str | None = "bench driver") -> None:
        self.groups = groups
        self.this_process = this_process
        self._start: dict[str, float] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        values = {name: tree_cpu_seconds(roots()) for name, roots in self.groups.items()}
        if self.this_process:
            values[self.this_process] = own_cpu_seconds()
        return values

    @staticmethod
    def _machine_times() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle, sum(t)

    def start(self) -> None:
        self._start = self._read()
        self._machine = self._machine_times()
        self._t0 = time.monotonic()

    def stop(self) -> CpuFigures:
        """Read before the measured processes are stopped: a stopped tree's time is gone with it."""
        end = self._read()
        busy, total = self._machine_times()
        seconds = time.monotonic() - self._t0
        by_group = {name: max(0.0, end[name] - self._start.get(name, 0.0)) for name in end}
        share = (busy - self._machine[0]) / max(total - self._machine[1], 1e-9)
        return CpuFigures(seconds, psutil.cpu_count() or 1, share, by_group)
