"""Header parsing: per-header fallbacks, ids, dates, Gmail metadata, message keys, ParseError."""

from __future__ import annotations

from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from pipeline.errors import ParseError
from pipeline.normalize import message_key, parse_message
from pipeline.normalize.headers import parse_message_id
from pipeline.records import Address


def message(*headers: str | bytes, body: bytes = b"hello\r\n") -> bytes:
    lines = [h if isinstance(h, bytes) else h.encode("utf-8") for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- addresses ------------------------------------------------------------------------------


def test_empty_group_with_comment_falls_back_to_compat32_and_keeps_the_message() -> None:
    raw = message(
        "From: Alice <alice@example.com>",
        "To: unlisted-recipients:; (no To-header on input)",
        "Subject: still here",
    )
    parsed = parse_message(raw)
    assert parsed.to == []
    assert parsed.subject == "still here"
    assert parsed.from_ == Address("Alice", "alice@example.com")
    assert any(d.startswith("header To: fell back to compat32: AttributeError") for d in parsed.defects)


def test_compat32_fallback_still_decodes_rfc2047_names() -> None:
    raw = message(
        "From: a@example.com",
        "To: =?utf-8?q?J=C3=BCrgen?= <j@example.de>, unlisted-recipients:; (no To-header on input)",
    )
    assert parse_message(raw).to == [Address("Jürgen", "j@example.de")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "To: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>",
            [Address("Jürgen Müller", "jm@example.de")],
        ),
        ("To: =?iso-8859-1?q?Andr=E9?= <andre@example.fr>", [Address("André", "andre@example.fr")]),
        (
            'To: "Doe, John" <jd@example.com>, x@example.com',
            [Address("Doe, John", "jd@example.com"), Address("", "x@example.com")],
        ),
        (
            "To: John Q. Public <jqp@example.com>, Jane <j@example.com>",
            [Address("John Q. Public", "jqp@example.com"), Address("Jane", "j@example.com")],
        ),
        (
            "To: Team: a@example.com, b@example.com;",
            [Address("", "a@example.com"), Address("", "b@example.com")],
        ),
        ("To: undisclosed-recipients:;", []),
        ("To: bob@example.com (Bob Smith)", [Address("Bob Smith", "bob@example.com")]),
        (  # a name split over two encoded words mid-word: the space between them is not text
            "To: =?UTF-8?Q?=D0=95=D0=BA=D0=B0=D1=82=D0=B5=D1=80=D0=B8=D0=BD=D0=B0_=D0=9C?= "
            "=?UTF-8?Q?=D0=BE=D1=80=D0=BE=D0=B7=D0=BE=D0=B2=D0=B0?= <ek@example.ru>, x@example.com",
            [Address("Екатерина Морозова", "ek@example.ru"), Address("", "x@example.com")],
        ),
        (  # a comma inside one encoded word is text, not a separator
            "To: =?UTF-8?B?TWVyY2llciwgQ8OpbGluZQ==?= <cm@example.fr>",
            [Address("Mercier, Céline", "cm@example.fr")],
        ),
    ],
)
def test_address_headers(header: str, expected: list[Address]) -> None:
    assert parse_message(message("From: a@example.com", header)).to == expected


def test_utf8_display_name_in_raw_8bit_header() -> None:
    raw = message("From: Jürgen <j@example.de>".encode())
    assert parse_message(raw).from_ == Address("Jürgen", "j@example.de")


def test_all_address_fields_and_repeated_headers() -> None:
    raw = message(
        "From: a@example.com",
        "To: t1@example.com",
        "To: t2@example.com",
        "Cc: c@example.com",
        "Bcc: b@example.com",
        "Reply-To: Replies <r@example.com>",
        "Delivered-To: me@example.com",
        "Delivered-To: <alias@example.com>",
    )
    parsed = parse_message(raw)
    assert [a.email for a in parsed.to] == ["t1@example.com", "t2@example.com"]
    assert parsed.cc == [Address("", "c@example.com")]
    assert parsed.bcc == [Address("", "b@example.com")]
    assert parsed.reply_to == [Address("Replies", "r@example.com")]
    assert parsed.delivered_to == ["me@example.com", "alias@example.com"]


# --- subject --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?q?_latte?=", "café latte"),
        ("Subject: =?UTF-8?B?w6lsw6hWZQ==?=", "élèVe"),
        ("Subject: Re: plain", "Re: plain"),
        (b"Subject: Caf\xc3\xa9 8-bit UTF-8", "Café 8-bit UTF-8"),
    ],
)
def test_subjects(header: str | bytes, expected: str) -> None:
    assert parse_message(message("From: a@example.com", header)).subject == expected


def test_encoded_word_with_unknown_charset_is_detected_and_recorded() -> None:
    raw = message("From: a@example.com", "Subject: =?x-unknown?q?Caf=E9_cr=E8me?=")
    parsed = parse_message(raw)
    assert parsed.subject == "Café crème"
    assert any("unknown charset 'x-unknown'" in d for d in parsed.defects)


def test_raw_latin1_subject_is_recovered() -> None:
    parsed = parse_message(message("From: a@example.com", b"Subject: Caf\xe9 cr\xe8me"))
    assert parsed.subject == "Café crème"
    assert any(d.startswith("header Subject:") for d in parsed.defects)


def test_very_long_folded_headers() -> None:
    ids = [f"<id{i}.{'x' * 40}@example.com>" for i in range(300)]
    words = " ".join(f"word{i}" for i in range(400))
    raw = message(
        "From: a@example.com",
        "Subject: " + "\r\n ".join(words.split(" ")),
        "References: " + "\r\n\t".join(ids),
    )
    parsed = parse_message(raw)
    assert parsed.subject == words
    assert len(parsed.references) == 300
    assert parsed.references[0] == "id0." + "x" * 40 + "@example.com"


# --- message ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected", "defect"),
    [
        ("Message-ID: <abc@example.com>", "abc@example.com", None),
        ("Message-ID: abc@example.com", "abc@example.com", "no angle brackets"),
        ("Message-ID: <first@example.com> <second@example.com>", "first@example.com", "2 ids"),
        ("Message-ID:   <abc@example.com>  (comment)", "abc@example.com", None),
        ("Message-ID: <>", None, "unusable"),
        ("Message-ID: two words", None, "unusable"),
    ],
)
def test_message_ids(header: str, expected: str | None, defect: str | None) -> None:
    parsed = parse_message(message("From: a@example.com", header))
    assert parsed.message_id == expected
    if defect is None:
        assert not [d for d in parsed.defects if "Message-ID" in d]
    else:
        assert any("Message-ID" in d and defect in d for d in parsed.defects)


def test_missing_message_id_is_none_without_defect() -> None:
    parsed = parse_message(message("From: a@example.com"))
    assert parsed.message_id is None
    assert parsed.defects == []


def test_references_and_in_reply_to() -> None:
    raw = message(
        "From: a@example.com",
        "References: <root@example.com> <mid@example.com>\r\n <mid@example.com> <last@example.com>",
        "In-Reply-To: <last@example.com> (John's message of Monday) <other@example.com>",
    )
    parsed = parse_message(raw)
    assert parsed.references == ["root@example.com", "mid@example.com", "last@example.com"]
    assert parsed.in_reply_to == "last@example.com"


def test_unbracketed_references() -> None:
    parsed = parse_message(message("From: a@example.com", "References: root@example.com, b@example.com"))
    assert parsed.references == ["root@example.com", "b@example.com"]


# --- dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Date: Tue, 1 Mar 2011 18:02:00 +0530", datetime(2011, 3, 1, 12, 32, tzinfo=UTC)),
        ("Date: Tue, 1 Mar 2011 18:02:00 -0000", datetime(2011, 3, 1, 18, 2, tzinfo=UTC)),
        ("Date: 1 Mar 2011 18:02 GMT", datetime(2011, 3, 1, 18, 2, tzinfo=UTC)),
        ("Date: Tue, 01 Mar 11 18:02:00 EST", datetime(2011, 3, 1, 23, 2, tzinfo=UTC)),
        ("Date: 2021-03-01T10:00:00+01:00", datetime(2021, 3, 1, 9, 0, tzinfo=UTC)),
    ],
)
def test_dates_are_timezone_aware_utc(header: str, expected: datetime) -> None:
    parsed = parse_message(message("From: a@example.com", header))
    assert parsed.date == expected
    assert parsed.date is not None and parsed.date.utcoffset() is not None
    assert parsed.defects == []


@pytest.mark.parametrize("value", ["not a date", "Tue, 31 Feb 2011 18:02:00 +0000", ""])
def test_bad_date_is_none_with_defect(value: str) -> None:
    parsed = parse_message(message("From: a@example.com", f"Date: {value}"))
    assert parsed.date is None
    assert any(d.startswith("header Date: unparsable") for d in parsed.defects)


# --- Gmail and list headers -----------------------------------------------------------------


def test_gmail_headers() -> None:
    raw = message(
        "From: a@example.com",
        "X-GM-THRID: 1713245049585441234",
        'X-Gmail-Labels: Inbox,"Work, urgent",=?UTF-8?Q?J=C3=BCrgen?=,Category Updates',
    )
    parsed = parse_message(raw)
    assert parsed.gmail_thread_id == "1713245049585441234"
    assert parsed.labels == ["Inbox", "Work, urgent", "Jürgen", "Category Updates"]


def test_gmail_arguments_win_over_headers() -> None:
    raw = message("From: a@example.com", "X-GM-THRID: 111", "X-Gmail-Labels: Inbox")
    parsed = parse_message(raw, gmail_thread_id="17c2f", labels=("SENT", "IMPORTANT"))
    assert parsed.gmail_thread_id == "17c2f"
    assert parsed.labels == ["SENT", "IMPORTANT"]


def test_bulk_mail_headers() -> None:
    raw = message(
        "From: news@example.com",
        "List-Id: Riak Users\r\n <riak-users.lists.example.com>",
        "List-Unsubscribe: <mailto:leave@example.com>, <https://example.com/u>",
        "Precedence: Bulk",
        "Auto-Submitted: Auto-Generated",
    )
    parsed = parse_message(raw)
    assert parsed.list_id == "Riak Users <riak-users.lists.example.com>"
    assert parsed.list_unsubscribe == "<mailto:leave@example.com>, <https://example.com/u>"
    assert parsed.precedence == "bulk"
    assert parsed.auto_submitted == "auto-generated"


# --- what is and is not a message -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \r\n\r\n",
        bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"just a body line\n",
    ],
)
def test_nothing_to_parse_raises_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"X-Only: one header",
        b"Subject: no body and no blank line",
        b"From MAILER-DAEMON Thu Jan  1 00:00:00 2015\nFrom: a@example.com\n\nmbox style",
        b"From: a@example.com\nbody without the blank line",
        b"From: a@example.com\nContent-Type: multipart/mixed\n\nno boundary at all",
        b'From: a@example.com\nContent-Type: text/plain; charset="\n\nbroken parameter',
    ],
)
def test_anything_with_a_header_parses(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.size == len(raw)


# --- message keys ---------------------------------------------------------------------------


def test_message_key_uses_the_message_id() -> None:
    raw = message("From: a@example.com", "Message-ID: <k@example.com>")
    assert message_key(parse_message(raw)) == "mid:k@example.com"


def test_synthetic_key_is_stable_across_trailing_whitespace_and_line_endings() -> None:
    crlf = message("From: a@example.com", "Subject: no id", body=b"text\r\n")
    variants = [crlf, crlf + b"\r\n\r\n", crlf.replace(b"\r\n", b"\n"), crlf.rstrip() + b" \t\n"]
    keys = {message_key(parse_message(raw)) for raw in variants}
    assert len(keys) == 1
    key = keys.pop()
    assert key.startswith("sha:") and len(key) == len("sha:") + 64


def test_synthetic_keys_differ_for_different_messages() -> None:
    one = message("From: a@example.com", body=b"one")
    two = message("From: a@example.com", body=b"two")
    assert message_key(parse_message(one)) != message_key(parse_message(two))


# --- found by fuzzing -----------------------------------------------------------------------


def test_corrupt_first_field_name_does_not_hide_the_other_headers() -> None:
    parsed = parse_message(b"F\xbfom: a@example.com\r\nTo: b@example.com\r\nSubject: kept\r\n\r\nbody\r\n")
    assert parsed.subject == "kept"
    assert parsed.to == [Address("", "b@example.com")]
    assert parsed.text == "body"
    assert "structure: dropped 1 malformed header line(s)" in parsed.defects


def test_body_without_blank_line_stays_body() -> None:
    parsed = parse_message(b"From: a@example.com\nbody starts here\nsecond line\n")
    assert parsed.from_ == Address("", "a@example.com")
    assert parsed.text == "body starts here\nsecond line"


def test_raw_8bit_bytes_never_leak_as_surrogates() -> None:
    raw = message(
        b"From: a@example.com",
        b"Subject: =?utf\xda8?q?x?= caf\xe9",
        b"Message-ID: <caf\xe9@example.com>",
        b"X-Gmail-Labels: caf\xe9",
        b'Content-Type: text/plain; name="r\xe9sum\xe9.txt"',
        b'Content-Disposition: attachment; filename="r\xe9sum\xe9.txt"',
    )
    parsed = parse_message(raw)
    for value in [parsed.subject, parsed.message_id or "", *parsed.labels, *parsed.defects]:
        value.encode("utf-8")  # raises on surrogate escapes
    assert parsed.message_id == "café@example.com"
    assert parsed.attachments[0].filename == "résumé.txt"


@pytest.mark.parametrize(
    "header",
    [
        b"Message-ID: <plain@example.com>",
        b"Message-ID: <caf\xe9@example.com>",
        b"Message-ID: bare@example.com",
    ],
)
def test_header_only_readers_get_the_same_message_id(header: bytes) -> None:
    # Ingest reads only the header block, with compat32, and must key messages as normalize does.
    raw = message(b"From: a@example.com", header)
    compat32_value = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Message-ID")
    assert parse_message_id(compat32_value) == parse_message(raw).message_id
