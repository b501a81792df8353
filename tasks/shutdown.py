"""On a process's way out: no garbage collection during the interpreter's teardown.

At exit CPython tears its modules down and collects every generation of objects. A worker pool's
main process or a CLI command, with SQLAlchemy, Celery, kombu and pydantic loaded, spent 0.3-0.45 s
there after its work was done (py-spy: `gc_collect_main`), and every command that runs workers waited
for both: its pool's exit, then its own. Frozen, those objects are left to the operating system, as
they would be a moment later anyway. atexit handlers (the embedded PostgreSQL's stop, logging's
flush), buffered output and everything freed by reference counting happen as before; only objects in
reference cycles are no longer finalized at exit, which Python never promised.
"""

from __future__ import annotations

import gc


def skip_final_collection() -> None:
    """Call last, on the way out (sys.exit or a return from main): gc.freeze() moves every object
    the collector tracks to a generation it never examines."""
    gc.freeze()
