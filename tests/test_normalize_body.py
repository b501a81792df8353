"""Body extraction: part choice, transfer encodings, charsets, HTML -> text, attachments, bounces."""

from __future__ import annotations

import base64

import pytest

from pipeline.normalize import parse_message
from pipeline.normalize.html_text import html_to_text
from pipeline.records import Attachment

HEAD = b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: test\r\nMIME-Version: 1.0\r\n"


def single(content_type: str, body: bytes, *extra: str) -> bytes:
    headers = [f"Content-Type: {content_type}", *extra]
    return HEAD + "\r\n".join(headers).encode() + b"\r\n\r\n" + body


def multipart(subtype: str, *parts: bytes, boundary: str = "BOUNDARY") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
        + body
        + (b"--" + boundary.encode() + b"--\r\n")
    )


def part(content_type: str, body: bytes, *extra: str) -> bytes:
    return "\r\n".join([f"Content-Type: {content_type}", *extra]).encode() + b"\r\n\r\n" + body


# --- part choice ----------------------------------------------------------------------------


def test_plain_text_message() -> None:
    raw = single("text/plain; charset=utf-8", "Grüße\r\nzweite Zeile\r\n".encode())
    parsed = parse_message(raw)
    assert parsed.text == "Grüße\nzweite Zeile"
    assert parsed.stripped == "Grüße\nzweite Zeile"
    assert parsed.body_source == "plain"
    assert parsed.content_type == "text/plain"
    assert parsed.size == len(raw)


def test_alternative_prefers_plain() -> None:
    raw = HEAD + multipart(
        "alternative",
        part("text/plain; charset=utf-8", b"the plain version"),
        part("text/html; charset=utf-8", b"<p>the <b>html</b> version</p>"),
    )
    parsed = parse_message(raw)
    assert parsed.text == "the plain version"
    assert parsed.body_source == "plain"
    assert parsed.content_type == "multipart/alternative"


def test_alternative_with_empty_plain_uses_html() -> None:
    raw = HEAD + multipart(
        "alternative",
        part("text/plain; charset=utf-8", b"  \r\n"),
        part("text/html; charset=utf-8", b"<p>only <i>html</i> here</p>"),
    )
    parsed = parse_message(raw)
    assert parsed.text == "only html here"
    assert parsed.body_source == "html"


def test_nested_related_html_with_inline_image() -> None:
    image = base64.b64encode(b"\x89PNG" + b"\x00" * 96)
    related = multipart(
        "related",
        part("text/html; charset=utf-8", b'<div>Logo below</div><img src="cid:logo">'),
        part("image/png", image, "Content-Transfer-Encoding: base64", "Content-ID: <logo>"),
        boundary="REL",
    )
    raw = HEAD + multipart("alternative", related)
    parsed = parse_message(raw)
    assert parsed.text == "Logo below"
    assert parsed.body_source == "html"
    assert parsed.attachments == [Attachment("", "image/png", 100)]


def test_no_text_part_gives_source_none() -> None:
    raw = single(
        "application/octet-stream", base64.b64encode(b"\x00" * 10), "Content-Transfer-Encoding: base64"
    )
    parsed = parse_message(raw)
    assert parsed.text == ""
    assert parsed.body_source == "none"
    assert parsed.attachments == [Attachment("", "application/octet-stream", 10)]


def test_text_calendar_is_ignored() -> None:
    raw = HEAD + multipart(
        "alternative",
        part("text/plain; charset=utf-8", b"You are invited"),
        part("text/calendar; method=REQUEST", b"BEGIN:VCALENDAR\r\nEND:VCALENDAR"),
    )
    parsed = parse_message(raw)
    assert parsed.text == "You are invited"
    assert "VCALENDAR" not in parsed.text
    assert parsed.attachments == []


# --- transfer encodings and charsets --------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "encoding", "body", "expected"),
    [
        ("text/plain; charset=utf-8", "quoted-printable", b"caf=C3=A9 =\r\nsoft break", "café soft break"),
        ("text/plain; charset=utf-8", "base64", base64.b64encode("naïve ünïcode".encode()), "naïve ünïcode"),
        ("text/plain; charset=iso-8859-1", "quoted-printable", b"caf=E9", "café"),
        ("text/plain; charset=windows-1251", "8bit", "Привет".encode("cp1251"), "Привет"),
        ("text/plain; charset=iso-2022-jp", "7bit", "こんにちは".encode("iso2022_jp"), "こんにちは"),
        ("text/plain; charset=gb2312", "8bit", "你好，世界".encode("gb18030"), "你好，世界"),
    ],
)
def test_declared_charsets_and_encodings(
    content_type: str, encoding: str, body: bytes, expected: str
) -> None:
    parsed = parse_message(single(content_type, body, f"Content-Transfer-Encoding: {encoding}"))
    assert parsed.text == expected
    assert parsed.defects == []


@pytest.mark.parametrize(
    ("content_type", "body", "expected", "reason"),
    [
        (
            "text/plain; charset=utf-8",
            "Caf\xe9 cr\xe8me br\xfbl\xe9e".encode("cp1252"),
            "Café crème brûlée",
            "does not decode",
        ),
        ("text/plain", "Grüße aus München".encode(), "Grüße aus München", "no charset declared"),
        (
            "text/plain",
            "Grüße aus München, schöne Grüße".encode("cp1252"),
            "Grüße aus München, schöne Grüße",
            "no charset declared",
        ),
        ("text/plain; charset=x-bogus", "Grüße".encode(), "Grüße", "unknown charset 'x-bogus'"),
        (
            "text/plain; charset=us-ascii",
            "Привет, как дела? Всё хорошо.".encode("cp1251"),
            "Привет, как дела? Всё хорошо.",
            "does not decode",
        ),
    ],
)
def test_missing_wrong_or_unknown_charsets_are_detected(
    content_type: str, body: bytes, expected: str, reason: str
) -> None:
    parsed = parse_message(single(content_type, body, "Content-Transfer-Encoding: 8bit"))
    assert parsed.text == expected
    assert any(d.startswith("part text/plain:") and reason in d for d in parsed.defects)


def test_html_meta_charset_is_used_when_mime_omits_it() -> None:
    html = '<html><head><meta charset="windows-1252"></head><body>Caf\xe9</body></html>'.encode("cp1252")
    parsed = parse_message(single("text/html", html, "Content-Transfer-Encoding: 8bit"))
    assert parsed.text == "Café"
    assert parsed.defects == []


def test_broken_base64_is_a_defect_not_an_error() -> None:
    parsed = parse_message(
        single("text/plain; charset=utf-8", b"SGVsbG8gd29ybGQ\r\n", "Content-Transfer-Encoding: base64")
    )
    assert parsed.text == "Hello world"
    assert any("InvalidBase64PaddingDefect" in d for d in parsed.defects)


# --- HTML -> text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><head><title>T</title><style>p{color:red}</style></head><body><p>Hi</p></body></html>", "Hi"),
        ("<p>one</p><script>var x = 1;</script><p>two</p>", "one\n\ntwo"),
        ("<p>Fish &amp; chips &lt;3 &eacute;t&eacute; &#8364;5&nbsp;each</p>", "Fish & chips <3 été €5 each"),
        (
            "<div>line one</div><div>line two</div><div><br></div><div>after a blank</div>",
            "line one\nline two\n\nafter a blank",
        ),
        ("First<br>Second<br/><br />Fourth", "First\nSecond\n\nFourth"),
        ("<ul><li>apples</li><li>pears</li></ul><ol><li>first</li></ol>", "- apples\n- pears\n\n- first"),
        ('Read <a href="https://example.com/x">the docs</a> now', "Read the docs now"),
        ("<p>  lots   of\n\n   spaces\t here </p>", "lots of spaces here"),
        (
            "<table><tr><td>Name</td><td>Value</td></tr><tr><td>a</td><td>1</td></tr></table>",
            "Name Value\na 1",
        ),
        ("<pre>def f():\n    return 1</pre>", "def f():\n    return 1"),
        ("<DIV>Outlook</DIV><DIV>upper case</DIV>", "Outlook\nupper case"),
        ("<p>zero\u200bwidth\u200c preheader</p>", "zerowidth preheader"),
        ("", ""),
    ],
)
def test_html_to_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


def test_html_blockquotes_become_quote_lines() -> None:
    html = (
        "<div>Sounds good.</div><div class=gmail_quote>"
        "On Mon, 1 Mar 2021 at 10:00, Bob &lt;bob@example.com&gt; wrote:<br>"
        "<blockquote>Lunch?<br>Noon?<blockquote>older</blockquote></blockquote></div>"
    )
    assert html_to_text(html) == (
        "Sounds good.\nOn Mon, 1 Mar 2021 at 10:00, Bob <bob@example.com> wrote:\n\n"
        "> Lunch?\n> Noon?\n\n>> older"
    )
    parsed = parse_message(single("text/html; charset=utf-8", html.encode()))
    assert parsed.stripped == "Sounds good."
    assert "Lunch?" in parsed.text


# --- attachments, forwards, bounces ---------------------------------------------------------


def test_attachments_are_metadata_only() -> None:
    pdf = b"%PDF-1.4 secret attachment body " * 10
    raw = HEAD + multipart(
        "mixed",
        part("text/plain; charset=utf-8", b"See attached."),
        part(
            'application/pdf; name="report.pdf"',
            base64.b64encode(pdf),
            "Content-Transfer-Encoding: base64",
            'Content-Disposition: attachment; filename="report.pdf"',
        ),
        part(
            "text/plain; charset=utf-8",
            b"notes in a text file",
            "Content-Disposition: attachment; filename*=utf-8''R%C3%A9sum%C3%A9.txt",
        ),
        part("text/html", b"<p>an attached page</p>", 'Content-Disposition: inline; filename="page.html"'),
    )
    parsed = parse_message(raw)
    assert parsed.text == "See attached."
    assert parsed.attachments == [
        Attachment("report.pdf", "application/pdf", len(pdf)),
        Attachment("Résumé.txt", "text/plain", len(b"notes in a text file")),
        Attachment("page.html", "text/html", len(b"<p>an attached page</p>")),
    ]
    assert "secret" not in parsed.text and "notes" not in parsed.text and "page" not in parsed.text


def test_inline_text_parts_without_filename_are_joined() -> None:
    raw = HEAD + multipart(
        "mixed",
        part("text/plain; charset=utf-8", b"The message."),
        part("text/plain; charset=utf-8", b"_______________\r\nlist footer"),
    )
    assert parse_message(raw).text == "The message.\n\n_______________\nlist footer"


def test_forwarded_message_attachment() -> None:
    inner = (
        b"From: Carol <carol@example.com>\r\nTo: alice@example.com\r\nSubject: the plan\r\n"
        b"Date: Mon, 1 Mar 2021 10:00:00 +0000\r\n\r\nHere is the plan.\r\n"
    )
    raw = HEAD + multipart(
        "mixed",
        part("text/plain; charset=utf-8", b"FYI, see below.\r\n\r\n-- \r\nAlice"),
        part("message/rfc822", inner, 'Content-Disposition: attachment; filename="plan.eml"'),
    )
    parsed = parse_message(raw)
    assert parsed.stripped == "FYI, see below."
    assert parsed.signature == "Alice"
    assert parsed.text.startswith("FYI, see below.")
    assert "---------- Forwarded message ----------\nFrom: Carol <carol@example.com>" in parsed.text
    assert "Subject: the plan" in parsed.text
    assert parsed.text.endswith("Here is the plan.")
    assert "plan" not in parsed.stripped
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]
    assert parsed.attachments[0].filename == "plan.eml"
    assert parsed.attachments[0].size > 0


def test_base64_encoded_forwarded_message_is_read() -> None:
    inner = b"From: carol@example.com\r\nSubject: inner\r\n\r\nInner text.\r\n"
    raw = HEAD + multipart(
        "mixed",
        part("text/plain", b"Forwarding."),
        part("message/rfc822", base64.b64encode(inner), "Content-Transfer-Encoding: base64"),
    )
    parsed = parse_message(raw)
    assert parsed.stripped == "Forwarding."
    assert parsed.text.endswith("Inner text.")


def test_bounce_keeps_report_type_and_human_part_only() -> None:
    status = (
        b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
        b"Final-Recipient: rfc822; gone@example.org\r\nStatus: 5.1.1\r\n"
    )
    original = b"From: alice@example.com\r\nTo: gone@example.org\r\nSubject: hello\r\n\r\nOriginal body.\r\n"
    raw = b"From: MAILER-DAEMON@example.com\r\nSubject: Undelivered Mail\r\n" + multipart(
        "report; report-type=delivery-status",
        part("text/plain; charset=us-ascii", b"Your message could not be delivered to gone@example.org."),
        part("message/delivery-status", status),
        part("message/rfc822", original),
    )
    parsed = parse_message(raw)
    assert parsed.content_type == "multipart/report"
    assert parsed.text == "Your message could not be delivered to gone@example.org."
    assert "Status" not in parsed.text and "Original body" not in parsed.text
    assert parsed.body_source == "plain"


def test_signed_message_ignores_the_signature_part() -> None:
    raw = HEAD + multipart(
        'signed; protocol="application/pgp-signature"',
        part("text/plain; charset=utf-8", b"Signed text."),
        part(
            "application/pgp-signature",
            b"-----BEGIN PGP SIGNATURE-----\r\nxyz\r\n-----END PGP SIGNATURE-----",
        ),
    )
    parsed = parse_message(raw)
    assert parsed.text == "Signed text."
    assert parsed.attachments == []


def test_deep_nesting_is_capped_with_a_defect() -> None:
    body = part("text/plain", b"deep")
    for level in range(30):
        body = multipart("mixed", body, boundary=f"B{level}")
    parsed = parse_message(HEAD + body)
    assert parsed.text == ""
    assert any("nested deeper" in d for d in parsed.defects)
