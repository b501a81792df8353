"""Gmail push notifications: parsing, unknown accounts, coverage by the cursor, coalescing."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import Engine, update

from pipeline.errors import BadInputError
from pipeline.push import COALESCED, COVERED, QUEUED, UNKNOWN, handle_push, parse_push, start_requested_sync
from pipeline.runs import ensure_account
from pipeline.storage.db import transaction
from pipeline.storage.models import Account


def _body(email: str, history_id: int) -> dict[str, object]:
    data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": history_id}).encode()).decode()
    return {"message": {"data": data, "messageId": "1", "publishTime": "2026-11-23T10:00:00Z"},
            "subscription": "projects/p/subscriptions/s"}


def _gmail_account(engine: Engine, email: str = "me@example.com", cursor: int | None = 100) -> int:
    account_id = ensure_account(engine, email, [], kind="gmail")
    with transaction(engine) as s:
        s.execute(update(Account).where(Account.id == account_id).values(history_id=cursor))
    return account_id


def test_parse_reads_the_base64_notice() -> None:
    notice = parse_push(_body("Me@Example.com", 12345))
    assert (notice.email, notice.history_id) == ("me@example.com", 12345)


@pytest.mark.parametrize("body", [{}, {"message": {}}, {"message": {"data": "not base64 json"}},
                                  {"message": {"data": base64.b64encode(b'{"emailAddress": "x"}').decode()}}])
def test_parse_rejects_what_is_not_a_notice(body: dict[str, object]) -> None:
    with pytest.raises(BadInputError):
        parse_push(body)


def test_unknown_account_is_acknowledged_and_nothing_queued(engine: Engine) -> None:
    queued: list[int] = []
    outcome = handle_push(engine, parse_push(_body("stranger@example.com", 5)), queued.append)
    assert outcome.status == UNKNOWN and queued == []


def test_notice_older_than_the_cursor_is_covered(engine: Engine) -> None:
    _gmail_account(engine, cursor=100)
    queued: list[int] = []
    assert handle_push(engine, parse_push(_body("me@example.com", 90)), queued.append).status == COVERED
    assert queued == []


def test_a_burst_becomes_one_queued_sync_until_it_starts(engine: Engine) -> None:
    account_id = _gmail_account(engine)
    queued: list[int] = []
    statuses = [handle_push(engine, parse_push(_body("me@example.com", 101 + i)), queued.append).status
                for i in range(50)]
    assert statuses[0] == QUEUED and set(statuses[1:]) == {COALESCED}
    assert queued == [account_id]
    start_requested_sync(engine, account_id)  # the sync began: newer changes need a new one
    assert handle_push(engine, parse_push(_body("me@example.com", 200)), queued.append).status == QUEUED
    assert queued == [account_id, account_id]


def test_a_failed_enqueue_does_not_block_later_triggers(engine: Engine) -> None:
    _gmail_account(engine)

    def broken(_: int) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        handle_push(engine, parse_push(_body("me@example.com", 150)), broken)
    queued: list[int] = []
    assert handle_push(engine, parse_push(_body("me@example.com", 151)), queued.append).status == QUEUED
