"""The worker pool the CLI runs itself when no broker is configured (the embedded default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import MailpipeError
from tasks.config import QUEUES

MAX_RESTARTS = 3


class WorkerPoolError(MailpipeError):
    """The worker pool could not be kept running."""


class WorkerPool:
    """A real `celery worker` subprocess (prefork, one child per core) on every queue."""

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
                sys.executable, "-m", "celery", "-A", "tasks", "worker",
                "-Q", ",".join(QUEUES), "-c", str(self.concurrency), "--pool", "prefork",
                "-l", self.log_level, "-n", f"mailpipe-cli-{os.getpid()}@%h", "--without-heartbeat",
                "--without-gossip", "--without-mingle",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the CLI, which stops us cleanly
        )
        log.close()

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
