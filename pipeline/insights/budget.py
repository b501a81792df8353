"""Tokens, their price, and the per-account daily budget of LLM insight calls (the `ai_usage` ledger).

Before a call its worst case is reserved on the account's row for the UTC day: the prompt (estimated)
plus the whole completion allowance. The reservation is a conditional UPDATE of that one row, so
workers in parallel cannot together overrun the budget. After the call the reservation is replaced by
what the endpoint reports in `usage`. Each reservation is also a row of `ai_reservations` with an
expiry (`hold_seconds`, longer than any call can last): a worker killed mid-call leaves one behind, and
the next reservation of that account and day gives its amount back once it has expired, instead of
the budget staying short by it until the day ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, text

from pipeline.resilience.classify import QUOTA, ClassifiedError
from pipeline.settings import Settings
from pipeline.storage.db import transaction

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English; the project's test server counts the same way


def estimate_tokens(value: str) -> int:
    """Approximate tokens of a text (no tokenizer download, no call): 4 characters a token."""
    return len(value) // CHARS_PER_TOKEN + 1


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(m.get("content", "")) for m in messages)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True, slots=True)
class Prices:
    input_per_million: float
    output_per_million: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Prices:
        return cls(settings.ai_price_input_per_million, settings.ai_price_output_per_million)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1_000_000


class BudgetExhausted(ClassifiedError):
    """The account's daily AI budget would be exceeded by the next call: none is made until tomorrow (UTC).

    Class quota: the insight stage is left to the enrichment sweep, which re-opens it later."""

    error_class = QUOTA


@dataclass(frozen=True, slots=True)
class Reservation:
    day: date
    usd: float
    id: int = 0  # its ai_reservations row


DEFAULT_HOLD_SECONDS = 900.0


# A reservation ends once: if it expired and a later reservation already gave its amount back, its row
# is gone and nothing is subtracted twice.
_FORGET = "WITH gone AS (DELETE FROM ai_reservations WHERE id = :id RETURNING usd)"


class Ledger:
    """One account's spending on LLM insights, per UTC day."""

    def __init__(self, engine: Engine, account_id: int, prices: Prices, daily_budget_usd: float, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 hold_seconds: float = DEFAULT_HOLD_SECONDS) -> None:
        self.engine = engine
        self.account_id = account_id
        self.prices = prices
        self.daily_budget_usd = daily_budget_usd
        self.clock = clock
        self.hold_seconds = hold_seconds

    def reserve(self, prompt_tokens: int, max_completion_tokens: int) -> Reservation:
        """Hold the call's worst-case cost, or raise BudgetExhausted (the call must not be made)."""
        day = self.clock().astimezone(UTC).date()
        usd = self.prices.cost(prompt_tokens, max_completion_tokens)
        key = {"a": self.account_id, "d": day}
        now = self.clock()
        with transaction(self.engine) as s:
            s.execute(text("INSERT INTO ai_usage (account_id, day) VALUES (:a, :d) ON CONFLICT DO NOTHING"), key)
            # The row lock orders this account's reservations; expired ones (their worker died) go first.
            s.execute(text("SELECT 1 FROM ai_usage WHERE account_id = :a AND day = :d FOR UPDATE"), key)
            s.execute(
                text("WITH gone AS (DELETE FROM ai_reservations WHERE account_id = :a AND day = :d "
                     "AND expires_at < :now RETURNING usd) "
                     "UPDATE ai_usage SET reserved_usd = greatest(reserved_usd - (SELECT coalesce(sum(usd), 0) "
                     "FROM gone), 0) WHERE account_id = :a AND day = :d"),
                {**key, "now": now},
            )
            held = s.execute(
                text("UPDATE ai_usage SET reserved_usd = reserved_usd + :usd, updated_at = now() "
                     "WHERE account_id = :a AND day = :d AND cost_usd + reserved_usd + :usd <= :budget "
                     "RETURNING 1"),
                {**key, "usd": usd, "budget": self.daily_budget_usd},
            ).first()
            reservation_id = 0
            if held is None:
                spent, reserved = s.execute(
                    text("SELECT cost_usd, reserved_usd FROM ai_usage WHERE account_id = :a AND day = :d"), key
                ).one()
            else:
                reservation_id = int(s.execute(
                    text("INSERT INTO ai_reservations (account_id, day, usd, expires_at) "
                         "VALUES (:a, :d, :usd, :until) RETURNING id"),
                    {**key, "usd": usd, "until": now + timedelta(seconds=self.hold_seconds)},
                ).scalar_one())
        if held is None:
            raise BudgetExhausted(
                f"daily AI budget exhausted for account {self.account_id} on {day.isoformat()}: "
                f"${float(spent):.4f} spent and ${float(reserved):.4f} in flight of ${self.daily_budget_usd:.4f}; "
                f"the next call may cost up to ${usd:.4f}. Insights resume tomorrow (UTC) or with a larger "
                "MAILPIPE_AI_DAILY_BUDGET_USD"
            )
        return Reservation(day, usd, reservation_id)

    def settle(self, reservation: Reservation, usage: Usage) -> float:
        """Replace the reservation by what the call cost; returns that cost in USD."""
        cost = self.prices.cost(usage.prompt_tokens, usage.completion_tokens)
        with transaction(self.engine) as s:
            s.execute(
                text(f"{_FORGET} UPDATE ai_usage SET reserved_usd = greatest(reserved_usd - "
                     "(SELECT coalesce(sum(usd), 0) FROM gone), 0), "
                     "cost_usd = cost_usd + :cost, calls = calls + 1, prompt_tokens = prompt_tokens + :p, "
                     "completion_tokens = completion_tokens + :c, updated_at = now() "
                     "WHERE account_id = :a AND day = :d"),
                {"id": reservation.id, "cost": cost, "p": usage.prompt_tokens, "c": usage.completion_tokens,
                 "a": self.account_id, "d": reservation.day},
            )
        return cost

    def release(self, reservation: Reservation) -> None:
        """The call failed without an answer: nothing was charged (OpenAI bills answered requests only)."""
        with transaction(self.engine) as s:
            s.execute(
                text(f"{_FORGET} UPDATE ai_usage SET reserved_usd = greatest(reserved_usd - "
                     "(SELECT coalesce(sum(usd), 0) FROM gone), 0), updated_at = now() "
                     "WHERE account_id = :a AND day = :d"),
                {"id": reservation.id, "a": self.account_id, "d": reservation.day},
            )
