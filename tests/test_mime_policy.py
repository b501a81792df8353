"""The memoizing policy gives what policy.default gives: same text, same header attributes."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest

from bench.generate import generate_mbox
from pipeline.normalize.feedparse import message_from_bytes
from pipeline.normalize.mime_policy import POLICY, PlainHeader
from pipeline.sources.mbox import iter_messages, open_mbox


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Content-Type", 'multipart/alternative; boundary="000000000000b50b92c90e13"'),
        ("Content-Type", 'text/plain; charset="UTF-8"'),
        ("Content-Type", "text/html"),
        ("Content-Type", 'Text/Plain; Charset="x"; format="flowed"'),
        ("Content-Type", 'multipart/mixed; boundary="----=_Part_1_2.3"'),
        ("Content-Disposition", 'attachment; filename="a b.pdf"'),
        ("Content-Disposition", "inline"),
        ("Content-Transfer-Encoding", " base64 "),
        ("Subject", "  hello   world  "),
        ("Subject", "a\tb"),
        ("X-Anything", "some value; with: punctuation (and parens)"),
    ],
)
def test_plain_values_read_as_the_registry_writes_them(name: str, value: str) -> None:
    got = POLICY.header_fetch_parse(name, value)
    real = policy.default.header_fetch_parse(name, value)
    assert isinstance(got, PlainHeader)
    assert str(got) == str(real)
    # Anything beyond the text is the registry's own object.
    assert got.defects == real.defects
    for attribute in ("params", "content_type", "content_disposition", "cte"):
        if hasattr(real, attribute):
            assert getattr(got, attribute) == getattr(real, attribute)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Content-Type", "text/plain; charset=UTF-8; format=flowed"),  # the registry quotes the values
        ("Content-Type", "text/plain;charset=\"x\""),  # and writes "; " between parameters
        ("Content-Type", 'application/pdf; name="=?UTF-8?B?csOpc3Vtw6kucGRm?="'),  # and decodes words
        ("Content-Type", 'text/plain; charset="a\\"b"'),  # and re-escapes quoted strings
        ("Content-Type", 'text/plain; charset=""'),
        ("Content-Type", "text"),
        ("Content-Disposition", "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
        ("Subject", "=?UTF-8?Q?caf=C3=A9?="),
        ("Subject", "caf\udce9"),  # raw 8-bit bytes
        ("From", "Bob <bob@example.com>"),  # addresses are rewritten by the registry
        ("Date", "Mon, 1 Jan 2024 10:00:00 +0000"),
    ],
)
def test_other_values_go_through_the_registry(name: str, value: str) -> None:
    got = POLICY.header_fetch_parse(name, value)
    assert not isinstance(got, PlainHeader)
    assert str(got) == str(policy.default.header_fetch_parse(name, value))


def test_every_header_of_a_generated_mailbox_reads_as_with_policy_default(tmp_path: Path) -> None:
    path = tmp_path / "gen.mbox"
    generate_mbox(path, 300, seed=3)
    plain = 0
    for entry in iter_messages(open_mbox(path)):
        ours = email.message_from_bytes(entry.raw or b"", policy=POLICY)
        theirs = email.message_from_bytes(entry.raw or b"", policy=policy.default)
        for mine, other in zip(ours.walk(), theirs.walk(), strict=True):
            assert mine.get_content_type() == other.get_content_type()
            assert mine.get_params() == other.get_params()
            assert mine.get_filename() == other.get_filename()
            for name, raw in mine.raw_items():
                value, expected = _read(POLICY, name, raw), _read(policy.default, name, raw)
                plain += isinstance(value, PlainHeader)
                assert str(value) == str(expected), name
    assert plain > 0


def _read(chosen: policy.EmailPolicy, name: str, raw: str) -> object:
    try:
        return chosen.header_fetch_parse(name, raw)
    except Exception as exc:  # the registry's bugs (an empty group with a comment): the same either way
        return f"{type(exc).__name__}: {exc}"


def test_the_parser_without_per_boundary_regexes_builds_the_same_messages(tmp_path: Path) -> None:
    path = tmp_path / "gen.mbox"
    generate_mbox(path, 300, seed=5)
    raws = [entry.raw or b"" for entry in iter_messages(open_mbox(path))]
    raws += [  # boundaries with characters re.escape escapes, a missing end, whitespace after it
        b'Content-Type: multipart/mixed; boundary="a.b(c)[d]*+?{e} f$^|\\\\"\n\n'
        b"--a.b(c)[d]*+?{e} f$^|\\\\\n\nhello\n--a.b(c)[d]*+?{e} f$^|\\\\-- \t\nepilogue\n",
        b'Content-Type: multipart/mixed; boundary="x"\n\n--x\r\n\r\none\r\n--x\nContent-Type: text/html\n\n<p>two\n',
        b'Content-Type: multipart/alternative; boundary="q"\n\npreamble\n--q\n\na\n--qq\nb\n--q--\n',
    ]
    for raw in raws:
        ours = message_from_bytes(raw, POLICY)
        theirs = email.message_from_bytes(raw, policy=POLICY)
        assert ours.as_bytes() == theirs.as_bytes()
        assert [(p.get_content_type(), [type(d) for d in p.defects], p.preamble, p.epilogue) for p in ours.walk()] == [
            (p.get_content_type(), [type(d) for d in p.defects], p.preamble, p.epilogue) for p in theirs.walk()
        ]
