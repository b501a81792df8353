"""Dynamic per-task time limits and the visibility timeout they imply (pure functions)."""

from __future__ import annotations

import math

import pytest

from pipeline.resilience.classify import POLICIES
from pipeline.resilience.timeouts import (
    STAGES,
    VISIBILITY_MARGIN_SECONDS,
    Limits,
    Stage,
    TimeoutPolicy,
    ingest_units,
    longest_countdown,
    stage_limits,
    stage_policy,
    time_limits,
    visibility_timeout,
)
from pipeline.settings import Settings


def _settings(**kwargs: object) -> Settings:
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg,arg-type]


POLICY = TimeoutPolicy(base_seconds=30, per_unit_seconds=0.5, max_seconds=300, grace_seconds=20)


@pytest.mark.parametrize(
    ("units", "soft", "hard"),
    [
        (0, 30, 50),
        (10, 35, 55),
        (100.5, 80.25, 100.25),
        (540, 300, 320),  # exactly the cap
        (10_000, 300, 320),  # capped
    ],
)
def test_time_limits(units: float, soft: float, hard: float) -> None:
    limits = time_limits(POLICY, units)
    assert (limits.soft, limits.hard) == (pytest.approx(soft), pytest.approx(hard))


@pytest.mark.parametrize("units", [-1, math.nan, math.inf])
def test_time_limits_reject_nonsense_units(units: float) -> None:
    with pytest.raises(ValueError, match="units"):
        time_limits(POLICY, units)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_seconds": -1, "per_unit_seconds": 1, "max_seconds": 10},
        {"base_seconds": 1, "per_unit_seconds": -1, "max_seconds": 10},
        {"base_seconds": 1, "per_unit_seconds": 1, "max_seconds": 0},
        {"base_seconds": 1, "per_unit_seconds": 1, "max_seconds": 10, "grace_seconds": -1},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimeoutPolicy(**kwargs)


def test_stage_limits_from_default_settings() -> None:
    s = _settings()
    grace = s.stage_time_limit - s.stage_soft_time_limit  # 60 s by default
    embed = stage_limits(s, "embed", 10_000)
    assert embed.soft == pytest.approx(30 + 0.002 * 10_000)
    assert embed.hard == pytest.approx(embed.soft + grace)
    normalize = stage_limits(s, "normalize", 10_000_000)  # a 10 MB window
    assert normalize.soft == pytest.approx(30 + 20)
    insight = stage_limits(s, "insight", 6_000)
    assert insight.soft == pytest.approx(60 + 120)
    # Ingest: 200 messages at 0.25 s each (the 2026 quota's ~5 msg/s) is 50 s of fetching.
    assert ingest_units(200, 0.25) == pytest.approx(50)
    assert stage_limits(s, "ingest", ingest_units(200, 0.25)).soft == pytest.approx(60 + 3 * 50)
    # Every stage is capped at the static soft limit, with the same grace.
    for stage in STAGES:
        assert stage_limits(s, stage, 1e12) == Limits(s.stage_soft_time_limit, s.stage_time_limit)


def test_small_tasks_get_much_less_than_the_static_limit() -> None:
    s = _settings()
    assert stage_limits(s, "embed", 500).soft < s.stage_soft_time_limit / 10
    assert stage_limits(s, "normalize", 200_000).soft < s.stage_soft_time_limit / 10


def test_embed_default_leaves_headroom_over_the_measured_speed() -> None:
    # MiniLM here: ~25 texts/s of <= 256 tokens. A window of 200 messages in 400 full chunks takes ~16 s.
    texts = 400
    measured = texts / 25
    limits = stage_limits(_settings(), "embed", texts * 256)
    assert limits.soft >= 5 * measured
    assert limits.soft < _settings().stage_soft_time_limit  # and is not simply the cap


def test_settings_change_the_policy() -> None:
    s = _settings(timeout_embed_base=5, timeout_embed_per_unit=0.1, stage_soft_time_limit=100, stage_time_limit=130)
    assert stage_policy(s, "embed") == TimeoutPolicy(5, 0.1, 100, 30)
    limits = stage_limits(s, "embed", 50)
    assert (limits.soft, limits.hard) == (pytest.approx(10), pytest.approx(40))


def test_grace_never_drops_below_the_floor() -> None:
    s = _settings(stage_soft_time_limit=600, stage_time_limit=600)
    assert stage_policy(s, "normalize").grace_seconds == 10


def test_unknown_stage() -> None:
    bad: Stage = "contacts"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="contacts"):
        stage_limits(_settings(), bad, 1)
    with pytest.raises(ValueError):
        ingest_units(-1, 0.1)


def test_visibility_timeout_outlasts_every_task_and_countdown() -> None:
    s = _settings()
    countdown = longest_countdown(s)
    # The longest countdown a stage can ask for: the largest backoff cap of a retried class (quota's hour).
    assert countdown == max(p.cap_seconds for p in POLICIES.values() if p.max_retries is not None) == 3600
    vt = visibility_timeout(s)
    assert vt == math.ceil(s.stage_time_limit + countdown + VISIBILITY_MARGIN_SECONDS)
    for stage in STAGES:
        for units in (0, 1e3, 1e6, 1e12):
            assert vt > stage_limits(s, stage, units).hard + countdown


def test_visibility_timeout_follows_the_settings() -> None:
    short = _settings(stage_soft_time_limit=100, stage_time_limit=150)
    assert visibility_timeout(short) == 150 + 3600 + VISIBILITY_MARGIN_SECONDS
    # A reset timeout longer than every backoff cap becomes the longest countdown.
    slow_reset = _settings(breaker_reset_seconds=5000)
    assert longest_countdown(slow_reset) == 5000
    assert visibility_timeout(slow_reset) == 660 + 5000 + VISIBILITY_MARGIN_SECONDS
