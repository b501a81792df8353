"""The Celery app. Its configuration comes from Settings; its tasks live in tasks.stages and tasks.syncs."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_init, worker_process_init

from pipeline.storage.db import dispose_engines, migrate
from tasks import context
from tasks.config import celery_config

app = Celery("mailpipe", include=["tasks.stages", "tasks.syncs"])
# Lazy: the configuration (and, on the embedded default, the database server behind the broker
# URL) is resolved on first use, after the CLI has put the URLs it chose into the environment.
app.add_defaults(lambda: celery_config(context.settings(), context.resolved_database_url()))


@worker_init.connect
def _migrate_on_start(**_: object) -> None:
    migrate(context.resolved_database_url())


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    # Pooled connections inherited from the parent must not be shared with it.
    dispose_engines()
    logging.getLogger("pipeline").setLevel(logging.INFO)
