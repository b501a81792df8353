"""The product's Celery app with one more task that takes a while: for tests of how its workers stop
(`celery -A tests.slow_task_app worker`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasks.app import app

__all__ = ["app", "write_pid_after"]


@app.task(name="tests.write_pid_after")
def write_pid_after(folder: str, name: str, seconds: float) -> None:
    """Writes `name`.started, then after `seconds` `name` holding this process's pid."""
    Path(folder, f"{name}.started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(folder, name).write_text(str(os.getpid()))
