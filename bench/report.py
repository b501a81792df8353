"""Writes one scenario's figures into docs/PERFORMANCE.md, replacing that scenario's previous section."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path


def write_section(path: Path, scenario: str, command: str, header: list[str], rows: list[list[str]],
                  verdict: str) -> None:
    start, end = f"<!-- bench:{scenario}:start -->", f"<!-- bench:{scenario}:end -->"
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    body = "\n".join([
        start,
        f"### `{scenario}`",
        "",
        f"Command: `{command}`  ",
        f"Measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}",
        "",
        *table,
        "",
        verdict,
        end,
    ])
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)
