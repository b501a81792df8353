"""Ingest's identify parses only the header block, and finds the same headers as in the whole message."""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import pytest

from pipeline.sources.mbox import iter_messages, open_mbox
from pipeline.stages.ingest import header_block, identify
from pipeline.testing.gmail_mailbox import FakeMailbox

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "samples" / "sample.mbox"
_PARSER = BytesHeaderParser(policy=compat32)

CRAFTED = [
    b"Message-ID: <a@x>\r\nSubject: hi\r\n\r\nbody\r\nMessage-ID: <not@header>\r\n",
    b"Message-ID: <a@x>\nSubject: hi\n\nbody\n",
    b"Message-ID: <a@x>\rSubject: hi\r\rbody\r",
    b"Subject: mixed\r\nMessage-ID: <a@x>\n\r\nbody",
    b"Subject: mixed\nMessage-ID: <a@x>\r\n\nbody",
    b"Subject: folded\r\n  over two lines\r\nMessage-ID:\r\n <folded@x>\r\n\r\nbody",
    b"From someone@x Mon Jan  1 00:00:00 2024\nMessage-ID: <unixfrom@x>\n\nbody",
    b"Subject: a line that is no header ends the block\nnot a header\nMessage-ID: <late@x>\n\nbody",
    b"Message-ID: <no-body@x>\r\nSubject: no empty line at all",
    b"\r\n\r\nMessage-ID: <after-empty@x>\r\n",
    b"Message-ID: <ends-with-cr@x>\r\n\r",
]


def _raws() -> list[bytes]:
    generated = FakeMailbox.from_generated("me@example.com", 200, seed=11)
    sample = [m.raw for m in iter_messages(open_mbox(SAMPLE)) if m.raw]
    return [*CRAFTED, *sample, *(generated.get(i).raw for i in generated.ids())]


def test_the_header_block_holds_the_same_headers_as_the_whole_message() -> None:
    differing = [raw[:60] for raw in _raws() if _PARSER.parsebytes(header_block(raw)).items()
                 != _PARSER.parsebytes(raw).items()]
    assert differing == []


@pytest.mark.parametrize(("raw", "block"), [
    (b"A: 1\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\n\r\n"),
    (b"A: 1\n\nbody", b"A: 1\n\n"),
    (b"A: 1\r\rbody", b"A: 1\r\r"),
    (b"A: 1\r\n\r\n", b"A: 1\r\n\r\n"),
    (b"A: 1\n\r\nbody", b"A: 1\n\r\n"),
    (b"A: 1\r\nB: 2", b"A: 1\r\nB: 2"),
])
def test_the_header_block_stops_at_the_first_empty_line(raw: bytes, block: bytes) -> None:
    assert header_block(raw) == block


def test_identify_finds_the_message_id_of_the_header_block_only() -> None:
    assert identify(CRAFTED[0])[1] == "a@x"
    assert identify(CRAFTED[7])[1] is None  # after a line that is no header: the body's, not a header
