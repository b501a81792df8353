"""tasks.shutdown: the CLI and a worker pool's process leave their objects to the OS on the way out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli_import import ROOT, cli_env

# Runs a module as `python -m` does and says, at the very end (atexit), how many objects the collector
# was told to leave alone: 0 unless the module froze them on its way out.
PROBE = (
    "import atexit, gc, runpy, sys\n"
    "atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.__stderr__))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _frozen_at_exit(tmp_path: Path, *argv: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, env=cli_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"^frozen (\d+)$", done.stderr, re.M)
    assert found, done.stderr[-2000:]
    return done.returncode, int(found.group(1))


@pytest.mark.parametrize("argv", [["import", "missing.mbox"], ["--help"]])
def test_the_cli_freezes_its_objects_on_the_way_out(tmp_path: Path, argv: list[str]) -> None:
    code, frozen = _frozen_at_exit(tmp_path, "tasks.cli", *argv)
    assert code == (2 if argv[0] == "import" else 0)  # the command's own exit code, unchanged
    assert frozen > 0


def test_a_worker_pools_process_freezes_its_objects_on_the_way_out(tmp_path: Path) -> None:
    code, frozen = _frozen_at_exit(tmp_path, "tasks.workers", "--concurrency", "not-a-number",
                                   "--hostname", "probe@%h")
    assert code == 2  # argparse's error, unchanged
    assert frozen > 0
