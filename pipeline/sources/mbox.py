"""A streaming mbox reader: one message in memory at a time, whatever the file's size.

Takeout writes mboxrd-style files: a `From ` line starts each message and body lines that begin
with `From ` are written as `>From `. We only split at a `From ` line that follows a blank line
(or starts the file) and looks like a postmark (`From <sender> <date>`), so a stray unescaped
`From ` in a body does not cut a message in two.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import BadInputError
from pipeline.records import RawMessage

_POSTMARK = re.compile(rb"^From \S+ .*\d{1,2}:\d{2}")
_ESCAPED_FROM = re.compile(rb"^>+From ")
_SNIFF_BYTES = 4096


@dataclass(frozen=True, slots=True)
class MboxFile:
    path: Path
    size: int
    compressed: bool


def open_mbox(path: Path) -> MboxFile:
    """Check that `path` is a readable mbox (plain or gzip) and describe it; raise BadInputError if not."""
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder, not an mbox file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
        compressed = magic == b"\x1f\x8b"
        with _open(path, compressed) as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInputError(f"{path}: cannot read: {reason}") from exc
    first = head.lstrip(b"\xef\xbb\xbf\r\n").split(b"\n", 1)[0]
    if not first.startswith(b"From "):
        raise BadInputError(f"{path}: not an mbox file (it does not start with a 'From ' line)")
    return MboxFile(path=path, size=path.stat().st_size, compressed=compressed)


def _open(path: Path, compressed: bool) -> BinaryIO:
    if compressed:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb", buffering=1 << 20)


def iter_messages(mbox: MboxFile) -> Iterator[RawMessage]:
    """Yield each message with a stable reference: the byte offset of its `From ` line."""
    with _open(mbox.path, mbox.compressed) as fh:
        yield from _split(fh)


def _split(fh: BinaryIO) -> Iterator[RawMessage]:
    lines: list[bytes] = []
    start = 0
    offset = 0
    previous_blank = True
    for line in fh:
        if previous_blank and line.startswith(b"From ") and _POSTMARK.match(line):
            if _has_content(lines):
                yield _message(start, lines)
            lines = []
            start = offset
        else:
            lines.append(line)
        offset += len(line)
        previous_blank = line in (b"\n", b"\r\n")
    if _has_content(lines):
        yield _message(start, lines)


def _has_content(lines: list[bytes]) -> bool:
    # Blank lines (or a byte-order mark) before the first postmark are not a message.
    return any(ln.strip(b"\xef\xbb\xbf \t\r\n") for ln in lines)


def _message(offset: int, lines: list[bytes]) -> RawMessage:
    # The blank line before the next postmark belongs to the mbox format, not to the message.
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines.pop()
    body = b"".join(_ESCAPED_FROM.sub(lambda m: m.group(0)[1:], ln) if ln[:1] == b">" else ln for ln in lines)
    return RawMessage(source_ref=f"offset:{offset}", raw=body)

