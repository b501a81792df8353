"""The quota bench's section names the command that reproduces its run, its non-default options included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.gmail_quota import WINDOWS_IN_FLIGHT, ingest_processes, write_report


def _data(processes: int, windows: int = WINDOWS_IN_FLIGHT) -> dict[str, Any]:
    result = {"email": "user0@example.com", "messages": 10, "missing": 0, "gets_per_second": 49.0,
              "ceiling_share": 0.98, "units_per_message": 5.0, "rate_limited": 0, "injected_5xx": 1,
              "sync_seconds": 1.0}
    return {"regime": "legacy", "accounts": 10, "latency": 0.05, "error_rate": 0.05, "ingest_processes": processes,
            "windows_in_flight": windows,
            "results": [result], "aggregate_gets_per_second": 49.0,
            "cpu": {"seconds": 1.0, "cores": 2, "machine_busy": 0.5, "cpu_seconds": {"workers": 1.0}}}


@pytest.mark.parametrize(("processes", "windows", "flag"), [
    (ingest_processes(10), WINDOWS_IN_FLIGHT, ""),
    (20, WINDOWS_IN_FLIGHT, " --ingest-processes 20"),
    (ingest_processes(10), 4, " --windows-in-flight 4"),
])
def test_the_section_names_the_options_that_were_not_the_default(tmp_path: Path, processes: int, windows: int,
                                                                  flag: str) -> None:
    report = tmp_path / "PERFORMANCE.md"
    write_report(report, _data(processes, windows), 1500)
    command = ("python -m bench.gmail_quota --regime legacy --accounts 10 --messages 1500 --latency 0.05 "
               f"--error-rate 0.05{flag}`")
    assert f"Command: `{command}" in report.read_text()
