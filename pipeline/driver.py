"""Drives one run: streams a source into durable windows, with back-pressure, and waits for the end.

The driver never touches message content beyond handing bytes to `add_window`; tasks receive
window ids only. At most `windows_in_flight` windows of a run are unfinished at any time, so
memory depends on the window size, not the mailbox's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Engine

from pipeline.records import RawMessage
from pipeline.runs import (
    RunProgress,
    add_window,
    end_reading,
    heartbeat,
    open_window_ids,
    open_windows,
    run_progress,
    stalled_windows,
    touch_windows,
)

Dispatch = Callable[[int], None]
Tick = Callable[[RunProgress], None]


@dataclass(frozen=True, slots=True)
class DriveOptions:
    window_size: int
    windows_in_flight: int
    poll_seconds: float = 0.25
    stall_seconds: float = 700.0  # longer than any stage's hard time limit: a lost task, not a slow one
    heartbeat_seconds: float = 5.0


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
        end_reading(self.engine, self.run_id, entries, seq)
        return entries

    def wait(self, timeout: float | None = None) -> RunProgress:
        """Wait until the run is no longer running; re-dispatch windows whose task was lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = run_progress(self.engine, self.run_id)
            if self.on_tick:
                self.on_tick(progress)
            if progress.status != "running":
                return progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} still running after {timeout} s")
            self._keep_alive()
            time.sleep(self.options.poll_seconds)

    def _send(self, seq: int, batch: list[RawMessage], entries: int) -> None:
        while open_windows(self.engine, self.run_id) >= self.options.windows_in_flight:
            self._keep_alive(entries)
            self._tick()
            time.sleep(self.options.poll_seconds)
        window_id = add_window(self.engine, self.run_id, seq, batch)
        self.dispatch(window_id)
        self._keep_alive(entries)
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if self.on_tick and now - self._last_tick >= self.options.poll_seconds:
            self._last_tick = now
            self.on_tick(run_progress(self.engine, self.run_id))

    def _keep_alive(self, entries: int | None = None) -> None:
        if self.alive and self.alive():
            for window_id in open_window_ids(self.engine, self.run_id):
                self.dispatch(window_id)
        now = time.monotonic()
        if now - self._last_heartbeat < self.options.heartbeat_seconds:
            return
        self._last_heartbeat = now
        heartbeat(self.engine, self.run_id, entries)
        lost = stalled_windows(self.engine, self.run_id, self.options.stall_seconds)
        if lost:
            touch_windows(self.engine, lost)
            for window_id in lost:
                self.dispatch(window_id)
