"""The stage tasks' Celery declarations: limits that belong to mailpipe's policies are not Celery's."""

from __future__ import annotations

import pytest

import tasks.stages  # noqa: F401  (registers the tasks)
from pipeline.runs import STAGES
from tasks.app import app


@pytest.mark.parametrize("stage", STAGES)
def test_retries_are_bounded_by_the_class_policy_not_celerys_default_of_three(stage: str) -> None:
    # `task.retry(max_retries=None)` means "the task's default" (3): only the declaration lifts it. The
    # chaos bench saw the 4th retry of a database outage fail its task before this.
    assert app.tasks[f"mailpipe.{stage}"].max_retries is None
