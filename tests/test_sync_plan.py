"""Which sync runs, as a pure function; and the history netting that feeds an incremental sync."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.errors import ConfigError
from pipeline.sources.gmail import HistoryDelta
from pipeline.syncing import after_query, plan_sync

NEWEST = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_first_sync_of_an_empty_account_lists_everything() -> None:
    plan = plan_sync(None, None, "auto", 2)
    assert (plan.mode, plan.query) == ("full", None)


def test_an_account_backfilled_from_takeout_catches_up_from_its_newest_mail() -> None:
    plan = plan_sync(None, NEWEST, "auto", 2)
    assert plan.mode == "full"
    assert plan.query == f"after:{int(datetime(2026, 11, 18, 12, 0, tzinfo=UTC).timestamp())}"


def test_a_cursor_means_incremental_unless_full_is_asked() -> None:
    assert plan_sync(42, NEWEST, "auto", 2).mode == "incremental"
    assert plan_sync(42, NEWEST, "incremental", 2).cursor == 42
    assert plan_sync(42, NEWEST, "full", 2).mode == "full"


def test_incremental_without_a_cursor_and_unknown_modes_are_errors() -> None:
    with pytest.raises(ConfigError):
        plan_sync(None, None, "incremental", 2)
    with pytest.raises(ConfigError):
        plan_sync(None, None, "sideways", 2)


def test_after_query_without_mail_is_none() -> None:
    assert after_query(None, 2) is None


def _added(mid: str) -> dict[str, object]:
    return {"messagesAdded": [{"message": {"id": mid, "threadId": "t" + mid, "labelIds": ["INBOX"]}}]}


def _deleted(mid: str) -> dict[str, object]:
    return {"messagesDeleted": [{"message": {"id": mid}}]}


def _labels(kind: str, mid: str, labels: list[str]) -> dict[str, object]:
    return {kind: [{"message": {"id": mid}, "labelIds": labels}]}


def test_history_is_netted_in_order() -> None:
    delta = HistoryDelta(latest_history_id=1)
    for record in [_added("a"), _added("b"), _deleted("a"), _labels("labelsAdded", "c", ["STARRED"]),
                   _labels("labelsRemoved", "c", ["STARRED", "UNREAD"]), _labels("labelsAdded", "b", ["X"]),
                   _deleted("d"), _added("d")]:
        delta.apply(record)
    assert set(delta.added) == {"b", "d"}  # a came and went; d was deleted then added back
    # a stays deleted: a full sync that listed after its snapshot may hold it already.
    assert delta.deleted == {"a"}
    assert delta.labels_added == {"c": set()}
    assert delta.labels_removed == {"c": {"STARRED", "UNREAD"}}
    assert "b" not in delta.labels_added  # b is fetched with its current labels anyway
