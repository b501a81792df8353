"""Per-task time limits sized to the work, and the broker visibility timeout they imply (DESIGN.md §4).

A fixed limit is either too short for a big window or far too long for a small one (a hung task then
holds its worker for the whole limit). Each stage's soft limit is base + per_unit × units, capped; the hard
limit adds a grace in which the task handles SoftTimeLimitExceeded (records the failure) before it is
killed. The caller passes the units and the result to `apply_async(soft_time_limit=..., time_limit=...)`:

    ingest     window size × observed seconds per message (API latency and quota waits)
    normalize  bytes of raw mail in the window
    embed      tokens to embed
    insight    prompt tokens to send

The cap and the grace come from `stage_soft_time_limit` and `stage_time_limit` (the defaults of every task
that passes no limits, e.g. contacts), so no stage ever gets more than a task without dynamic limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pipeline.resilience.classify import POLICIES
from pipeline.settings import Settings

Stage = Literal["ingest", "normalize", "embed", "insight"]
STAGES: tuple[Stage, ...] = ("ingest", "normalize", "embed", "insight")
MIN_GRACE_SECONDS = 10.0  # time to record a failure after the soft limit, whatever the settings say
VISIBILITY_MARGIN_SECONDS = 300  # broker and worker clock drift, queueing between delivery and start


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    """soft = min(max_seconds, base_seconds + per_unit_seconds × units); hard = soft + grace_seconds."""

    base_seconds: float
    per_unit_seconds: float
    max_seconds: float
    grace_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.base_seconds < 0 or self.per_unit_seconds < 0 or self.grace_seconds < 0 or self.max_seconds <= 0:
            raise ValueError(f"invalid timeout policy: {self}")


@dataclass(frozen=True, slots=True)
class Limits:
    soft: float  # seconds: Celery's soft_time_limit (raises SoftTimeLimitExceeded in the task)
    hard: float  # seconds: Celery's time_limit (kills the process)


def time_limits(policy: TimeoutPolicy, units: float) -> Limits:
    """The limits for a task of `units` units of work (pure)."""
    if not math.isfinite(units) or units < 0:
        raise ValueError(f"units must be a finite number ≥ 0, got {units}")
    soft = min(policy.max_seconds, policy.base_seconds + policy.per_unit_seconds * units)
    return Limits(soft, soft + policy.grace_seconds)


def stage_policy(settings: Settings, stage: Stage) -> TimeoutPolicy:
    """A stage's policy from settings: its base and per-unit values, the common cap and grace."""
    s = settings
    values = {
        "ingest": (s.timeout_ingest_base, s.timeout_ingest_per_unit),
        "normalize": (s.timeout_normalize_base, s.timeout_normalize_per_unit),
        "embed": (s.timeout_embed_base, s.timeout_embed_per_unit),
        "insight": (s.timeout_insight_base, s.timeout_insight_per_unit),
    }
    if stage not in values:
        raise ValueError(f"no time limits for stage {stage!r}; valid: {', '.join(STAGES)}")
    base, per_unit = values[stage]
    return TimeoutPolicy(base, per_unit, s.stage_soft_time_limit, _grace(s))


def ingest_units(window_size: int, seconds_per_message: float) -> float:
    """An ingest task's units: the seconds its fetching is expected to take at the observed latency.

    `seconds_per_message` is what the account's last windows took per message (HTTP latency over the
    batch, plus the waits the quota budget imposed); the per-unit setting is the headroom on it.
    """
    if window_size < 0 or seconds_per_message < 0:
        raise ValueError(f"window size ({window_size}) and latency ({seconds_per_message}) must be ≥ 0")
    return window_size * seconds_per_message


def stage_limits(settings: Settings, stage: Stage, units: float) -> Limits:
    """Limits for one stage task; `units` as the module's docstring says (see `ingest_units` for ingest)."""
    return time_limits(stage_policy(settings, stage), units)


def longest_countdown(settings: Settings) -> float:
    """The longest a retried task waits before running again: the largest backoff cap of a retried class,
    or an open breaker's reset timeout (BreakerOpenError.retry_after), whichever is longer."""
    caps = [p.cap_seconds for p in POLICIES.values() if p.max_retries is not None]
    return max([*caps, settings.breaker_reset_seconds])


def visibility_timeout(settings: Settings) -> int:
    """Redis `visibility_timeout` in seconds: the largest hard limit any task can get, plus the longest
    retry countdown, plus a margin. A message unacknowledged for longer is redelivered: with acks_late a
    task still running (or still waiting out its countdown) would run twice (DESIGN.md §4).

    The price: a task whose worker died is redelivered only after this long.
    """
    largest_hard = max(
        settings.stage_time_limit,
        *(stage_policy(settings, s).max_seconds + stage_policy(settings, s).grace_seconds for s in STAGES),
    )
    return math.ceil(largest_hard + longest_countdown(settings) + VISIBILITY_MARGIN_SECONDS)


def _grace(settings: Settings) -> float:
    return max(MIN_GRACE_SECONDS, settings.stage_time_limit - settings.stage_soft_time_limit)
