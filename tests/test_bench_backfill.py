"""bench/backfill.py at a tiny size: the bare parse sees every entry exactly once, and the scenario's
result compares it with a real `mailpipe import` of the same file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.backfill import bare_parse, measure, parse_range, split_ranges
from bench.generate import generate_mbox

pytestmark = pytest.mark.integration


def test_the_bare_parse_splits_at_postmarks_and_parses_every_entry_once(tmp_path: Path) -> None:
    mbox = tmp_path / "g.mbox"
    stats = generate_mbox(mbox, 300, seed=3)
    ranges = split_ranges(mbox, 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == mbox.stat().st_size
    assert all(a < b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(ranges, ranges[1:], strict=False))
    data = mbox.read_bytes()
    assert all(data[a:a + 5] == b"From " for a, _ in ranges)  # every range starts at a postmark
    counts = [parse_range((str(mbox), a, b)) for a, b in ranges]
    assert sum(c[0] for c in counts) == stats.messages
    assert sum(c[1] for c in counts) > 0  # bodies were extracted
    assert bare_parse(mbox, 2).messages == stats.messages


def test_backfill_at_a_tiny_size(tmp_path: Path) -> None:
    result = measure(60, tmp_path, embedder="none", processes=2, log=lambda _m: None)
    assert result.messages == 60 and result.stored == 60 and result.failed == 0 and result.failed_windows == 0
    assert result.command_seconds >= result.run_seconds > 0 and result.bare_seconds > 0
    # The bare parse ran before and after the import; the faster pass is the one compared.
    assert len(result.bare_passes) == 2 and result.bare_seconds == min(result.bare_passes)
    assert result.rate > 0 and result.bare_rate > 0
    # Both rates and the ratio are rounded for the report (0.1 and 0.001): compared within that. At
    # this size on a loaded machine a rate can be a few messages per second, where 0.05 is over 1%.
    from_rates = result.rate / result.bare_rate
    rounding = from_rates * (0.05 / result.rate + 0.05 / result.bare_rate) + 0.0005
    assert abs(result.ratio - from_rates) <= rounding * 1.01 + 1e-9
    assert set(result.cpu_seconds) == {"cli and workers", "postgres"} and result.cpu_seconds["cli and workers"] > 0
