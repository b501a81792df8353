"""thread_key: Gmail thread first, then the References root, In-Reply-To, own id, then the message key."""

from __future__ import annotations

import pytest

from pipeline.normalize import message_key, parse_message, thread_key
from pipeline.records import ParsedMessage


def parsed(**fields: object) -> ParsedMessage:
    base: dict[str, object] = {"message_id": None, "subject": "s", "from_": None}
    base.update(fields)
    return ParsedMessage(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"gmail_thread_id": "17c6ab4ba1bc99d2", "references": ["root@x"]}, "gm:17c6ab4ba1bc99d2"),
        ({"references": ["root@x", "mid@x"], "in_reply_to": "mid@x", "message_id": "me@x"}, "ref:root@x"),
        ({"in_reply_to": "parent@x", "message_id": "me@x"}, "ref:parent@x"),
        ({"message_id": "me@x"}, "ref:me@x"),
    ],
)
def test_thread_key_precedence(fields: dict[str, object], expected: str) -> None:
    assert thread_key(parsed(**fields)) == expected


def test_takeout_decimal_thread_id_matches_the_api_hex_one() -> None:
    # X-GM-THRID is the decimal form of the id the Gmail API returns in hex.
    decimal = str(int("17c6ab4ba1bc99d2", 16))
    api_form = thread_key(parsed(gmail_thread_id="17C6AB4BA1BC99D2"))
    assert thread_key(parsed(gmail_thread_id=decimal)) == api_form == "gm:17c6ab4ba1bc99d2"


def test_short_all_digit_api_ids_are_not_converted() -> None:
    assert thread_key(parsed(gmail_thread_id="1234567890123456")) == "gm:1234567890123456"


def test_message_without_any_id_uses_the_message_key() -> None:
    raw = b"From: a@example.com\r\nSubject: no ids\r\n\r\nbody\r\n"
    message = parse_message(raw)
    assert thread_key(message) == f"key:{message_key(message)}"
    assert thread_key(message).startswith("key:sha:")


def test_the_last_resort_is_a_stable_content_hash() -> None:
    raw = b"From: a@example.com\r\nSubject: no ids\r\n\r\nbody\r\n"
    first = thread_key(parse_message(raw))
    assert first.startswith("key:sha:")
    # The same message as Gmail's format=full gives it (base64 body): the same key.
    assert first == thread_key(parse_message(
        b"From: a@example.com\r\nSubject: no ids\r\nContent-Transfer-Encoding: base64\r\n\r\nYm9keQ0K\r\n"))
    assert first == thread_key(parse_message(raw + b"\r\n"))
    assert first != thread_key(parse_message(raw.replace(b"body", b"other")))


def test_thread_key_from_parsed_headers() -> None:
    raw = (
        b"From: a@example.com\r\nMessage-ID: <3@x>\r\nIn-Reply-To: <2@x>\r\n"
        b"References: <1@x>\r\n <2@x>\r\n\r\nreply\r\n"
    )
    assert thread_key(parse_message(raw)) == "ref:1@x"
    assert thread_key(parse_message(raw, gmail_thread_id="abc")) == "gm:abc"
