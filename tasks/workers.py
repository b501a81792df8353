"""The worker pool the CLI runs itself when no broker is configured (the embedded default), and the
lock by which a long-running `mailpipe worker` tells later commands to hand their work to its pool."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import ConfigError, MailpipeError
from tasks.config import QUEUES
from tasks.shutdown import skip_final_collection

MAX_RESTARTS = 3


class WorkerPoolError(MailpipeError):
    """The worker pool could not be kept running."""


class WorkerPool:
    """A real Celery worker subprocess (prefork, one child per core) on every queue: `serve`, below."""

    def __init__(self, env: dict[str, str], concurrency: int, log_path: Path, log_level: str = "WARNING") -> None:
        self.env = env
        self.log_level = log_level
        self.concurrency = concurrency
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "tasks.workers", "--concurrency", str(self.concurrency),
                "--loglevel", self.log_level, "--hostname", f"mailpipe-cli-{os.getpid()}@%h",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the CLI, which stops us cleanly
        )
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> bool:
        """True when the pool had died and was restarted; raises after too many restarts."""
        if self.process is None or self.process.poll() is None:
            return False
        if self.restarts >= MAX_RESTARTS:
            raise WorkerPoolError(
                f"the worker pool exited {self.restarts + 1} times (code {self.process.returncode}); "
                f"see {self.log_path}"
            )
        self.restarts += 1
        self.start()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)  # warm shutdown: running tasks finish
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


STANDING_LOCK = "worker.lock"  # in MAILPIPE_HOME


@dataclass(frozen=True)
class StandingWorker:
    """A `mailpipe worker` serving a data folder, as written into the lock file it holds."""

    pid: int
    broker_url: str
    concurrency: int
    log_path: str
    lock_path: str

    def running(self) -> bool:
        """Still holding its lock: gone however it ended (a crash or SIGKILL releases the lock too)."""
        return _lock_held(Path(self.lock_path))


def find_standing_worker(home: Path, broker_url: str) -> StandingWorker | None:
    """The `mailpipe worker` of this data folder, if one is running on this broker."""
    path = home / STANDING_LOCK
    if not _lock_held(path):
        return None
    try:
        found = StandingWorker(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # written a moment after the lock is taken
        return None
    return found if found.broker_url == broker_url else None


@contextmanager
def standing_lock(home: Path, broker_url: str, concurrency: int, log_path: Path) -> Iterator[StandingWorker]:
    """Hold this data folder's worker lock for as long as the block runs; ConfigError if another holds it.

    flock, not a pid file: the kernel drops the lock with its process, so a killed worker never leaves
    later commands waiting on a pool that is not there."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / STANDING_LOCK
    handle = path.open("a+")
    try:
        deadline = time.monotonic() + 1.0  # a command checking the lock holds it for a moment
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    held = find_standing_worker(home, broker_url)
                    who = f" (pid {held.pid})" if held else ""
                    raise ConfigError(f"a mailpipe worker is already running for {home}{who}") from None
                time.sleep(0.05)
        me = StandingWorker(os.getpid(), broker_url, concurrency, str(log_path), str(path))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(asdict(me)))
        handle.flush()
        try:
            yield me
        finally:
            path.unlink(missing_ok=True)
    finally:
        handle.close()  # releases the lock


def _lock_held(path: Path) -> bool:
    try:
        handle = path.open("r")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def serve(concurrency: int, log_level: str, hostname: str) -> int:
    """Run the app's worker in this process on every queue until it is stopped; its exit code.

    What `celery -A tasks worker -Q <every queue> --pool prefork --without-heartbeat --without-gossip
    --without-mingle` does, without celery's command line: importing it and its plugins (Flower's
    command among them) was ~0.37 s of every pool's start (ready 2.25 → 1.875 s with embeddings off,
    medians of five, ad-hoc; docs/PERFORMANCE.md, tenth round). Heartbeat, gossip and mingle are for a
    cluster of workers that watch each other; this pool is alone on its broker."""
    from celery.utils.nodenames import default_nodename, host_format

    from tasks.app import app

    worker = app.Worker(hostname=host_format(default_nodename(hostname)), pool_cls="prefork",
                        loglevel=log_level, queues=list(QUEUES), concurrency=concurrency,
                        without_heartbeat=True, without_gossip=True, without_mingle=True)
    worker.start()
    return int(worker.exitcode or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.workers", description=serve.__doc__)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--hostname", required=True, help="node name; %%h is this host's name")
    args = parser.parse_args(argv)
    return serve(args.concurrency, args.loglevel, args.hostname)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        skip_final_collection()
