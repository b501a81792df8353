"""Celery glue: the app, one short task per stage calling pipeline/, the chains and the CLI.

`celery -A tasks worker` finds the app here.
"""

from tasks.app import app

__all__ = ["app"]
