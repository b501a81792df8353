"""The child replacement bench at a tiny size: both pools, each in its own process, and the section it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.replacement import VARIANTS, main


def test_the_replacement_bench_measures_both_pools_and_writes_its_section(tmp_path: Path) -> None:
    report = tmp_path / "PERFORMANCE.md"
    assert main(["--tasks", "3", "--rounds", "2", "--idle", "0.2", "--report", str(report)]) == 0
    text = report.read_text()
    assert "<!-- bench:replacement:start -->" in text and "<!-- bench:replacement:end -->" in text
    assert "Command: `python -m bench.replacement --tasks 3 --rounds 2 --idle 0.2`" in text
    rows = [line for line in text.splitlines() if line.startswith(("| billiard |", "| mailpipe |"))]
    assert [r.split(" | ")[0] for r in rows] == [f"| {v}" for v in VARIANTS]
    assert all(len(r.split(" | ")[2].split(" / ")) == 2 for r in rows)  # one figure per round


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--tasks", "0"])
