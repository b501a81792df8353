"""Messages rebuilt from Gmail's format=full resource normalize exactly as their raw bytes do."""

from __future__ import annotations

import email
from dataclasses import asdict
from email.headerregistry import HeaderRegistry
from pathlib import Path
from typing import Any

import pytest

from pipeline.normalize import parse_message
from pipeline.sources.gmail_payload import PayloadError, attachment_count, boundary_of, message_bytes
from pipeline.testing.gmail_mailbox import FakeMailbox, StoredMessage, message_resource

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "samples" / "sample.mbox"


def _comparable(raw: bytes) -> dict[str, Any]:
    parsed = asdict(parse_message(raw))
    # Defects describe the bytes (e.g. a bad transfer encoding Gmail has already decoded); size is the
    # raw length, which now lacks the attachment bodies by design.
    parsed.pop("defects")
    parsed.pop("size")
    return parsed


def _messages(box: FakeMailbox) -> list[StoredMessage]:
    return [box.get(mid) for mid in box.ids()]


@pytest.mark.parametrize("source", ["sample", "generated"])
def test_rebuilt_messages_normalize_like_their_raw_bytes(source: str) -> None:
    box = (FakeMailbox.from_mbox("me@example.com", SAMPLE) if source == "sample"
           else FakeMailbox.from_generated("me@example.com", 300, seed=7))
    mismatched = []
    for msg in _messages(box):
        rebuilt = message_bytes(message_resource(msg, "full"))
        if _comparable(rebuilt) != _comparable(msg.raw):
            mismatched.append(msg.id)
    assert len(box) > 40
    assert mismatched == []


def test_attachments_keep_name_type_and_size_without_their_bodies() -> None:
    box = FakeMailbox.from_mbox("me@example.com", SAMPLE)
    with_attachments = [m for m in _messages(box) if parse_message(m.raw).attachments]
    assert len(with_attachments) >= 3
    for msg in with_attachments:
        resource = message_resource(msg, "full")
        rebuilt = message_bytes(resource)
        expected = parse_message(msg.raw).attachments
        assert parse_message(rebuilt).attachments == expected
        assert attachment_count(resource) == len(expected)
        bodies = [part.get_payload().split()[0] for part in email.message_from_bytes(msg.raw).walk()
                  if part.get_filename() and not part.is_multipart()]
        assert bodies and not any(body.encode() in rebuilt for body in bodies), "attachment bodies left out"


def test_a_resource_without_payload_is_refused() -> None:
    with pytest.raises(PayloadError):
        message_bytes({"id": "x", "raw": "abc"})


def test_decoded_names_with_commas_stay_one_address() -> None:
    resource = {"payload": {"mimeType": "text/plain", "headers": [
        {"name": "From", "value": "Mercier, Céline <cm@example.fr>"},
        {"name": "To", "value": "Doe, John <jd@example.com>, x@example.com"},
        {"name": "Subject", "value": "Réunion"},
    ], "body": {"size": 2, "data": "aGk="}}}
    parsed = parse_message(message_bytes(resource))
    assert (parsed.from_.name, parsed.from_.email) == ("Mercier, Céline", "cm@example.fr")  # type: ignore[union-attr]
    assert [(a.name, a.email) for a in parsed.to] == [("Doe, John", "jd@example.com"), ("", "x@example.com")]
    assert (parsed.subject, parsed.text.strip()) == ("Réunion", "hi")


@pytest.mark.parametrize("value", [
    'multipart/mixed; boundary="000000000000a1b2c3"',
    "multipart/alternative; boundary=simple-token_1.2",
    'multipart/related; type="text/html"; boundary="=_part one"',
    'multipart/mixed;boundary="no space"',
    'MULTIPART/MIXED; BOUNDARY="Upper"',
    'multipart/mixed; boundary="first"; boundary="second"',
    'multipart/mixed; charset="a; boundary=inner"; boundary="outer"',
    'multipart/mixed; boundary=""',
    'multipart/mixed; boundary=" spaced "',
    'multipart/mixed; boundary="escaped\\"quote"',
    'multipart/mixed; boundary="=?utf-8?q?encoded?="',
    "multipart/mixed; boundary*=utf-8''rfc2231",
    "multipart/mixed; boundary*0=split; boundary*1=value",
    'multipart/mixed; boundary = "around equals"',
    'multipart/mixed (comment); boundary="after comment"',
    "multipart/mixed",
    "text/plain; charset=utf-8",
    "",
])
def test_boundary_is_read_as_the_header_registry_reads_it(value: str) -> None:
    found = HeaderRegistry()("content-type", value).params.get("boundary")  # type: ignore[attr-defined]
    assert boundary_of(value) == (str(found) if found else None)


@pytest.mark.parametrize("value", [
    "plain@example.com", "Jane Doe <jane@example.com>", "jane@example.com (Jane)", "undisclosed-recipients:;",
    "Team: a@example.com;", "<jane@example.com>",
    # A decoded name with a semicolon: parsed again it reads as two entries, and the text is kept as it was.
    "Doe; John <john@example.com>",
])
def test_an_ascii_address_without_a_comma_is_written_as_gmail_gave_it(value: str) -> None:
    resource = {"payload": {"mimeType": "text/plain", "headers": [{"name": "To", "value": value}],
                            "body": {"size": 2, "data": "aGk="}}}
    assert message_bytes(resource).split(b"\r\n")[0] == f"To: {value}".encode()
