"""The streaming mbox reader: splitting, unescaping, offsets, bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pipeline.errors import BadInputError
from pipeline.sources.mbox import iter_messages, open_mbox

TWO = (
    b"From 1@xxx Mon Jan 01 10:00:00 +0000 2024\n"
    b"Message-ID: <a@x>\nSubject: one\n\nhello\n>From the start of a line\n"
    b"From here, unescaped but not after a blank line\n\n"
    b"From 2@xxx Tue Jan 02 11:00:00 +0000 2024\n"
    b"Message-ID: <b@x>\nSubject: two\n\nbye\n"
)


def _write(tmp_path: Path, data: bytes, name: str = "m.mbox") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_splits_messages_and_unescapes_from_lines(tmp_path: Path) -> None:
    msgs = list(iter_messages(open_mbox(_write(tmp_path, TWO))))
    assert len(msgs) == 2
    assert msgs[0].raw.endswith(b"From the start of a line\nFrom here, unescaped but not after a blank line\n")
    assert b">From" not in msgs[0].raw
    assert msgs[1].raw.startswith(b"Message-ID: <b@x>")
    assert msgs[0].source_ref == "offset:0"
    assert msgs[1].source_ref == f"offset:{TWO.index(b'From 2@')}"


def test_from_in_body_after_blank_line_without_postmark_does_not_split(tmp_path: Path) -> None:
    data = b"From 1@xxx Mon Jan 01 10:00:00 +0000 2024\nSubject: a\n\nbody\n\nFrom my desk: hi\n"
    assert len(list(iter_messages(open_mbox(_write(tmp_path, data))))) == 1


def test_crlf_and_gzip(tmp_path: Path) -> None:
    crlf = TWO.replace(b"\n", b"\r\n")
    assert len(list(iter_messages(open_mbox(_write(tmp_path, crlf))))) == 2
    gz = tmp_path / "m.mbox.gz"
    gz.write_bytes(gzip.compress(TWO))
    assert [m.raw for m in iter_messages(open_mbox(gz))] == [m.raw for m in iter_messages(open_mbox(
        _write(tmp_path, TWO, "plain.mbox")))]


def test_leading_blank_lines_are_not_a_message(tmp_path: Path) -> None:
    assert len(list(iter_messages(open_mbox(_write(tmp_path, b"\n\n" + TWO))))) == 2


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.mbox", "no such file"),
        (lambda p: p, "is a folder"),
        (lambda p: _write(p, b"Subject: not an mbox\n\nhi\n", "x.eml"), "not an mbox file"),
        (lambda p: _write(p, b"", "empty.mbox"), "not an mbox file"),
        (lambda p: _write(p, b"\x1f\x8bnot really gzip", "bad.gz"), "cannot read"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInputError, match=message):
        open_mbox(setup(tmp_path))
