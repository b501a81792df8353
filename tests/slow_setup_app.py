"""The product's Celery app with the insight stage's client built slowly, or failing, the first time in
each worker process: for tests of what a stage task does when its setup, not its work, meets the soft
time limit or an error (`celery -A tests.slow_setup_app worker`).

A first insight task on a busy machine once spent over 3 s importing and building the OpenAI client.
SLOW_SETUP_SECONDS: how long the first build sleeps; SLOW_SETUP_ERROR: a message to raise instead;
SLOW_SETUP_ALWAYS=1: every build is slow, not only the first.
"""

from __future__ import annotations

import os
import time

from pipeline.stages.insight import InsightTools
from tasks import context
from tasks.app import app

__all__ = ["app"]

_build = context.insight_tools
_first = True


def _first_build_slow() -> InsightTools:
    global _first
    if _first:
        # A retry in this process builds at once (imports done, files cached), unless told otherwise.
        _first = os.environ.get("SLOW_SETUP_ALWAYS") == "1"
        if os.environ.get("SLOW_SETUP_ERROR"):
            raise RuntimeError(os.environ["SLOW_SETUP_ERROR"])
        time.sleep(float(os.environ.get("SLOW_SETUP_SECONDS", "0")))
    return _build()


context.insight_tools = _first_build_slow  # type: ignore[assignment]
