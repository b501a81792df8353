"""Drives one run: streams a source into durable windows, with back-pressure, and waits for the end.

The driver never touches message content beyond handing bytes to `add_window`; tasks receive
window ids only. At most `windows_in_flight` windows of a run are unfinished at any time, so
memory depends on the window size, not the mailbox's.

The driver outlives short outages: a database call that fails transiently (PostgreSQL restarting) is
repeated for up to `outage_seconds`, and a window whose chain could not be sent (the broker
restarting) is saved already and sent again until it goes, so neither ends the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine

from pipeline.records import RawMessage
from pipeline.resilience.classify import TRANSIENT, classify
from pipeline.runs import (
    RunProgress,
    add_window,
    end_reading,
    heartbeat,
    open_window_ids,
    run_progress,
    stalled_windows,
    touch_windows,
    window_backlog,
)

Dispatch = Callable[[int], None]
Tick = Callable[[RunProgress], None]
T = TypeVar("T")

log = logging.getLogger(__name__)
OUTAGE_SECONDS = 120.0  # how long the driver waits out a database or broker that stopped answering


def patiently(call: Callable[..., T], *args: Any, patience: float = OUTAGE_SECONDS, pause: float = 1.0) -> T:
    """`call(*args)`, repeated while it fails transiently (e.g. the database restarting), for up to `patience` s.

    For reads and for writes that are safe to repeat; any other error is raised at once.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            return call(*args)
        except Exception as exc:
            if classify(exc) != TRANSIENT or time.monotonic() >= deadline:
                raise
            log.warning("%s failed (%s); trying again in %g s", getattr(call, "__name__", "a call"),
                        _first_line(exc), pause)
            time.sleep(pause)


@dataclass(frozen=True, slots=True)
class DriveOptions:
    window_size: int
    windows_in_flight: int
    # At most this many windows not yet ingested (None: no such bound). A Gmail sync sets it: a window
    # is fetched at the account's quota, so a few keep the account fetching without a gap, and more
    # would only wait in the ingest queue in front of other accounts' windows while this one's quota
    # holds them back (docs/PERFORMANCE.md, eighteenth round).
    before_ingest: int | None = None
    poll_seconds: float = 0.25
    stall_seconds: float = 700.0  # longer than any stage's hard time limit: a lost task, not a slow one
    heartbeat_seconds: float = 5.0
    outage_seconds: float = OUTAGE_SECONDS


class Driver:
    def __init__(self, engine: Engine, run_id: int, options: DriveOptions, dispatch: Dispatch,
                 on_tick: Tick | None = None, alive: Callable[[], bool] | None = None) -> None:
        self.engine = engine
        self.run_id = run_id
        self.options = options
        self.dispatch = dispatch
        self.on_tick = on_tick
        # Checks the workers this driver started (if any): True when they had to be restarted, in
        # which case every unfinished window is sent again (a broker without redelivery lost them).
        self.alive = alive
        self._last_heartbeat = 0.0
        self._last_tick = 0.0
        self._unsent: dict[int, float] = {}  # window id -> when sending its chain first failed
        self._last_resend = 0.0

    def feed(self, messages: Iterable[RawMessage]) -> int:
        """Save and dispatch every message in windows; return the number of entries read."""
        batch: list[RawMessage] = []
        entries = seq = 0
        for message in messages:
            batch.append(message)
            entries += 1
            if len(batch) >= self.options.window_size:
                self._send(seq, batch, entries)
                seq, batch = seq + 1, []
        if batch:
            self._send(seq, batch, entries)
            seq += 1
        self._patiently(end_reading, self.engine, self.run_id, entries, seq)
        return entries

    def wait(self, timeout: float | None = None) -> RunProgress:
        """Wait until the run is no longer running; re-dispatch windows whose task was lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self._patiently(run_progress, self.engine, self.run_id)
            if self.on_tick:
                self.on_tick(progress)
            if progress.status != "running":
                return progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} still running after {timeout} s")
            self._keep_alive()
            time.sleep(self.options.poll_seconds)

    def _send(self, seq: int, batch: list[RawMessage], entries: int) -> None:
        while self._held_back():
            self._keep_alive(entries)
            self._tick()
            time.sleep(self.options.poll_seconds)
        window_id = self._patiently(add_window, self.engine, self.run_id, seq, batch)
        self._dispatch(window_id)
        self._keep_alive(entries)
        self._tick()

    def _held_back(self) -> bool:
        backlog = self._patiently(window_backlog, self.engine, self.run_id)
        cap = self.options.before_ingest
        return backlog.open >= self.options.windows_in_flight or (cap is not None and backlog.before_ingest >= cap)

    def _patiently(self, call: Callable[..., T], *args: Any) -> T:
        return patiently(call, *args, patience=self.options.outage_seconds)

    def _dispatch(self, window_id: int) -> None:
        """Send the window's chain; when that fails, the window (saved already) is sent again later."""
        try:
            self.dispatch(window_id)
        except Exception as exc:
            log.warning("window %s could not be sent (%s); sending it again shortly", window_id, _first_line(exc))
            self._unsent.setdefault(window_id, time.monotonic())
        else:
            self._unsent.pop(window_id, None)

    def _resend(self) -> None:
        now = time.monotonic()
        if not self._unsent or now - self._last_resend < 1.0:
            return
        self._last_resend = now
        for window_id, since in sorted(self._unsent.items()):
            if now - since > self.options.outage_seconds:
                raise RuntimeError(f"window {window_id} could not be sent for {self.options.outage_seconds:g} s; "
                                   "is the broker up?")
            self._dispatch(window_id)
            if window_id in self._unsent:
                return  # still failing: the others would too

    def _tick(self) -> None:
        now = time.monotonic()
        if self.on_tick and now - self._last_tick >= self.options.poll_seconds:
            self._last_tick = now
            self.on_tick(self._patiently(run_progress, self.engine, self.run_id))

    def _keep_alive(self, entries: int | None = None) -> None:
        if self.alive and self.alive():
            for window_id in self._patiently(open_window_ids, self.engine, self.run_id):
                self._dispatch(window_id)
        self._resend()
        now = time.monotonic()
        if now - self._last_heartbeat < self.options.heartbeat_seconds:
            return
        self._last_heartbeat = now
        self._patiently(heartbeat, self.engine, self.run_id, entries)
        lost = self._patiently(stalled_windows, self.engine, self.run_id, self.options.stall_seconds)
        if lost:
            self._patiently(touch_windows, self.engine, lost)
            for window_id in lost:
                self._dispatch(window_id)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
