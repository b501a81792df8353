"""`python -m bench`: the scenario list, the --size translation and errors."""

from __future__ import annotations

import pytest

from bench.__main__ import SCENARIOS, describe, main


def test_every_scenario_is_listed_and_db_scale_is_registered_by_module_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("memory", "ingest-quota", "chaos", "search", "embed", "backfill", "pipeline", "hierarchy", "db-scale"):
        assert name in out
    assert SCENARIOS["db-scale"].module == "db_scale"
    assert all(SCENARIOS[n].available() for n in ("backfill", "pipeline", "hierarchy", "memory", "embed"))
    assert describe().count("\n") == len(SCENARIOS) - 1


def test_size_becomes_each_scenarios_own_option() -> None:
    assert SCENARIOS["memory"].translate(["--size", "200", "--json"]) == ["--sizes", "200", "2000", "--json"]
    assert SCENARIOS["ingest-quota"].translate(["--size=600", "--regime", "2026"]) == [
        "--messages", "600", "--regime", "2026"]
    assert SCENARIOS["backfill"].translate(["--size", "10", "--size", "20"]) == ["--size", "10", "--size", "20"]
    with pytest.raises(SystemExit):
        SCENARIOS["replies"].translate(["--size", "3"])


def test_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    assert "unknown scenario" in capsys.readouterr().err
