"""bench/pipeline_ratio.py at a tiny size: the CLI import and each stage alone over the same windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.pipeline_ratio import STAGE_ORDER, measure

pytestmark = pytest.mark.integration


def test_pipeline_ratio_at_a_tiny_size(tmp_path: Path) -> None:
    data = measure(40, embedder="none", processes=2, window_size=10, workdir=tmp_path, log=lambda _m: None)
    assert data["end_to_end"]["summary"]["status"] == "done"
    assert data["end_to_end"]["summary"]["entries"] == 40
    stages = {s["stage"]: s for s in data["stages"]}
    assert list(stages) == ["read", *STAGE_ORDER]
    assert stages["read"]["windows"] == 4 and stages["read"]["outcomes"] == {"entries": 40}
    for name in STAGE_ORDER:  # every window went through every stage, alone
        assert stages[name]["outcomes"] == ({"skipped": 4} if name == "embed" else {"done": 4})
    assert data["slowest_stage"] in stages and data["slowest_seconds"] == max(s["seconds"] for s in data["stages"])
    assert data["ratio"] == pytest.approx(data["end_to_end"]["run_seconds"] / data["slowest_seconds"], rel=0.01)
    assert data["sum_of_stages"] >= data["slowest_seconds"]
    assert data["round_ratios"] == [data["ratio"]] and data["end_to_end"]["timeline"]["tasks_span"] > 0
    # The verdict's import went to a `mailpipe worker` whose pool was up before the command started.
    # Not `< 0`: log stamps are to the millisecond and the timeline rounds to 0.01 s, so a pool ready
    # a few milliseconds before the command reads 0.0 (CI saw -0.0).
    assert data["end_to_end"]["timeline"]["ready_after"] <= 0 < data["end_to_end"]["timeline"]["first_task_after"]
    own = data["one_shot"]  # and the one-shot import's pool was its own, booted after the command started
    assert own["summary"]["status"] == "done" and own["summary"]["entries"] == 40
    assert own["timeline"]["ready_after"] > 0 and data["one_shot_round_ratios"] == [own["ratio"]]
    assert own["ratio"] == pytest.approx(own["run_seconds"] / data["slowest_seconds"], rel=0.01)
