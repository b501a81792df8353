"""The daily AI budget's reservations on a real PostgreSQL: held per call, settled, and given back when
the worker holding one died."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from pipeline.insights.budget import BudgetExhausted, Ledger, Prices, Usage
from pipeline.runs import ensure_account

PRICES = Prices(input_per_million=1_000_000.0, output_per_million=1_000_000.0)  # $1 a token: easy sums
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _ledger(engine: Engine, account: int, budget: float, now: list[datetime], hold: float = 600.0) -> Ledger:
    return Ledger(engine, account, PRICES, budget, clock=lambda: now[0], hold_seconds=hold)


def _usage(engine: Engine, account: int) -> tuple[float, float, int]:
    with engine.connect() as conn:
        cost, reserved = conn.execute(text("SELECT cost_usd, reserved_usd FROM ai_usage WHERE account_id = :a"),
                                      {"a": account}).one()
        rows = conn.execute(text("SELECT count(*) FROM ai_reservations WHERE account_id = :a"), {"a": account}).scalar()
    return float(cost), float(reserved), int(rows or 0)


def test_a_call_reserves_its_worst_case_and_settles_at_its_real_cost(engine: Engine) -> None:
    account = ensure_account(engine, "budget@example.com", [])
    now = [T0]
    ledger = _ledger(engine, account, 10.0, now)
    held = ledger.reserve(prompt_tokens=3, max_completion_tokens=4)  # $7 at worst
    assert _usage(engine, account) == (0.0, 7.0, 1)
    with pytest.raises(BudgetExhausted, match="in flight"):
        ledger.reserve(prompt_tokens=2, max_completion_tokens=2)  # 7 + 4 > 10
    assert ledger.settle(held, Usage(prompt_tokens=3, completion_tokens=1)) == 4.0
    assert _usage(engine, account) == (4.0, 0.0, 0)
    ledger.release(ledger.reserve(prompt_tokens=2, max_completion_tokens=2))  # fits now; failed: nothing charged
    assert _usage(engine, account) == (4.0, 0.0, 0)


def test_the_reservation_of_a_worker_killed_mid_call_is_given_back_once_it_expires(engine: Engine) -> None:
    account = ensure_account(engine, "killed@example.com", [])
    now = [T0]
    ledger = _ledger(engine, account, 10.0, now, hold=600)
    orphan = ledger.reserve(prompt_tokens=4, max_completion_tokens=4)  # its worker dies: never settled
    now[0] = T0 + timedelta(seconds=599)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(prompt_tokens=2, max_completion_tokens=2)  # still held: it may yet be answered
    now[0] = T0 + timedelta(seconds=601)
    fresh = ledger.reserve(prompt_tokens=2, max_completion_tokens=2)  # the orphan's $8 came back first
    assert _usage(engine, account) == (0.0, 4.0, 1)
    # The orphan's worker was not dead after all: its late settle charges what it cost, and does not
    # subtract a reservation that was already given back.
    ledger.settle(orphan, Usage(prompt_tokens=4, completion_tokens=1))
    assert _usage(engine, account) == (5.0, 4.0, 1)
    ledger.settle(fresh, Usage(prompt_tokens=2, completion_tokens=2))
    assert _usage(engine, account) == (9.0, 0.0, 0)


def test_parallel_reservations_never_hold_more_than_the_budget(engine: Engine) -> None:
    account = ensure_account(engine, "parallel@example.com", [])
    now = [T0]
    ledger = _ledger(engine, account, 20.0, now)

    def attempt(_: int) -> bool:
        try:
            ledger.reserve(prompt_tokens=1, max_completion_tokens=2)  # $3 each
            return True
        except BudgetExhausted:
            return False

    with ThreadPoolExecutor(8) as pool:
        granted = sum(pool.map(attempt, range(40)))
    assert granted == 6  # 6 × 3 = 18 ≤ 20 < 21
    assert _usage(engine, account) == (0.0, 18.0, 6)
