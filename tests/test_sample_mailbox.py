"""The bundled sample mailbox: present, parseable, feature-complete, and as its README describes."""

from __future__ import annotations

import email
import mailbox
import re
from collections import Counter
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32, default
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "pipeline" / "samples"
SAMPLE = SAMPLES / "sample.mbox"
ACCOUNT = "me@example.com"
_IDS = re.compile(r"<([^<>\s]+)>")
_HEADERS = BytesHeaderParser(policy=compat32)  # compat32 reads the broken To header without raising


@pytest.fixture(scope="module")
def entries() -> list[bytes]:
    assert SAMPLE.is_file(), "run `python -m bench.make_sample`"
    return [entry.as_bytes() for entry in mailbox.mbox(SAMPLE)]


@pytest.fixture(scope="module")
def headers(entries: list[bytes]) -> list[Message]:
    return [_HEADERS.parsebytes(raw) for raw in entries]


@pytest.fixture(scope="module")
def parsed(entries: list[bytes]) -> list[Message]:
    return [email.message_from_bytes(raw) for raw in entries]


def _ids(value: object) -> list[str]:
    return _IDS.findall(str(value or ""))


def _threads_by_headers(headers: list[Message]) -> tuple[list[str], dict[str, list[int]]]:
    """Union-find over Message-ID / References / In-Reply-To; X-GM-THRID ignored."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    nodes = []
    for i, h in enumerate(headers):
        mid = _ids(h["Message-ID"])
        node = mid[0] if mid else f"#{i}"
        nodes.append(node)
        for link in _ids(h["References"]) + _ids(h["In-Reply-To"]):
            parent[find(link)] = find(node)
    roots = [find(n) for n in nodes]
    groups: dict[str, list[int]] = {}
    for i, root in enumerate(roots):
        groups.setdefault(root, []).append(i)
    return roots, groups


def _readme_counts() -> dict[str, int]:
    table = re.findall(
        r"^\| ([^|]+?) \| (\d+) \|$", (SAMPLES / "README.md").read_text(encoding="utf-8"), re.M
    )
    return {name: int(value) for name, value in table}


def test_sample_is_rebuilt_byte_for_byte() -> None:
    from bench.make_sample import build_sample

    assert build_sample() == SAMPLE.read_bytes(), "sample.mbox is stale: run `python -m bench.make_sample`"


def test_sample_size_and_takeout_shape(entries: list[bytes], headers: list[Message]) -> None:
    assert 40 <= len(entries) <= 60
    assert SAMPLE.read_bytes().startswith(b"From ")
    assert all(h["X-Gmail-Labels"] for h in headers)
    received = [h for h in headers if "Sent" not in str(h["X-Gmail-Labels"]).split(",")]
    assert all(str(h["Delivered-To"]) == ACCOUNT for h in received)


def test_counts_match_readme(headers: list[Message]) -> None:
    readme = _readme_counts()
    ids = [m[0] for m in (_ids(h["Message-ID"]) for h in headers) if m]
    roots, groups = _threads_by_headers(headers)
    thread_keys = {
        ("g", str(h["X-GM-THRID"])) if h["X-GM-THRID"] else ("h", root)
        for h, root in zip(headers, roots, strict=True)
    }
    no_thrid = [i for i, h in enumerate(headers) if not h["X-GM-THRID"]]
    sent = sum("Sent" in str(h["X-Gmail-Labels"]).split(",") for h in headers)
    assert readme["total entries"] == len(headers)
    assert readme["distinct Message-IDs"] == len(set(ids))
    assert readme["messages without Message-ID"] == len(headers) - len(ids)
    assert readme["duplicates (same Message-ID as an earlier entry)"] == len(ids) - len(set(ids))
    assert readme["threads by headers"] == len(groups)
    assert readme["threads"] == len(thread_keys)
    assert readme["messages without X-GM-THRID"] == len(no_thrid)
    assert readme["sent by the account (label Sent)"] == sent
    assert readme["received"] == len(headers) - sent


def test_counts_module_agrees_with_readme() -> None:
    from bench.make_sample import count_mailbox, readme

    assert readme(count_mailbox(SAMPLE)) == (SAMPLES / "README.md").read_text(encoding="utf-8")


def test_long_thread_linked_only_by_headers(headers: list[Message]) -> None:
    roots, groups = _threads_by_headers(headers)
    plain = [members for members in groups.values() if all(not headers[i]["X-GM-THRID"] for i in members)]
    assert max(map(len, plain)) >= 6
    longest = max(plain, key=len)
    assert all(headers[i]["In-Reply-To"] for i in longest[1:])
    assert any(headers[i]["X-GM-THRID"] for i in range(len(headers))), "other threads do have X-GM-THRID"
    gm = Counter(str(h["X-GM-THRID"]) for h in headers if h["X-GM-THRID"])
    assert max(gm.values()) >= 3


def test_message_without_id_and_exact_duplicate(entries: list[bytes], headers: list[Message]) -> None:
    assert any(not h["Message-ID"] for h in headers)
    ids = Counter(m[0] for m in (_ids(h["Message-ID"]) for h in headers) if m)
    dup = [mid for mid, n in ids.items() if n > 1]
    assert len(dup) == 1
    copies = [raw for raw, h in zip(entries, headers, strict=True) if _ids(h["Message-ID"]) == dup]
    assert copies[0] == copies[1]


def test_bulk_and_automated_mail(parsed: list[Message], headers: list[Message]) -> None:
    assert any(h["List-Unsubscribe"] and h["List-Id"] for h in headers)
    assert any(str(h["Precedence"]).lower() == "bulk" for h in headers)
    reports = [m for m in parsed if m.get_content_type() == "multipart/report"]
    assert reports and "mailer-daemon" in str(reports[0]["From"]).lower()
    assert "message/delivery-status" in [p.get_content_type() for p in reports[0].walk()]
    senders = " ".join(str(h["From"]).lower() for h in headers)
    assert "noreply@" in senders or "no-reply@" in senders
    assert "notifications@github.com" in senders
    assert any(
        "receipt" in str(h["Subject"]).lower() or "booking confirmation" in str(h["Subject"]).lower()
        for h in headers
    )


def test_structures_and_charsets(parsed: list[Message]) -> None:
    types = {m.get_content_type() for m in parsed}
    assert {"multipart/alternative", "text/html", "multipart/mixed"} <= types
    legacy = {}
    for message in parsed:
        for part in message.walk():
            charset = part.get_content_charset()
            if part.get_content_maintype() == "text" and charset and charset != "utf-8":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                decoded = payload.decode(charset)
                if not decoded.isascii():
                    legacy[charset] = decoded
    assert {"iso-8859-1", "windows-1252"} <= set(legacy)
    assert {"koi8-r", "shift_jis"} & set(legacy)
    assert "€" in legacy["windows-1252"]


def test_broken_header_is_present_and_breaks_policy_default(
    entries: list[bytes], headers: list[Message]
) -> None:
    broken = [
        raw
        for raw, h in zip(entries, headers, strict=True)
        if str(h["To"]).startswith("unlisted-recipients:;")
    ]
    assert len(broken) == 1
    with pytest.raises(AttributeError):
        str(email.message_from_bytes(broken[0], policy=default)["To"])


def _plain_texts(parsed: list[Message]) -> str:
    texts = []
    for message in parsed:
        for part in message.walk():
            if part.get_content_maintype() == "text":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                texts.append(payload.decode(part.get_content_charset() or "utf-8"))
    return "\n".join(texts)


def test_quotes_forwards_and_signatures(parsed: list[Message]) -> None:
    text = _plain_texts(parsed)
    for marker in (
        r"^On .+ wrote:$",
        r"^Le .+ a écrit :$",
        r"^Am .+ schrieb .+:$",
        r"^El .+ escribió:$",
        r"^Em .+ escreveu:$",
        r"Il giorno .+ ha scritto:",
        r"^---------- Forwarded message ---------$",
        r"^-- $",
        r"^> ",
    ):
        assert re.search(marker, text, re.M), marker


def test_people_sent_mail_and_questions(headers: list[Message], parsed: list[Message]) -> None:
    sent = [h for h in headers if "Sent" in str(h["X-Gmail-Labels"]).split(",")]
    assert sent and all(ACCOUNT in str(h["From"]) for h in sent)
    assert any(str(h["To"]).count("@") >= 2 for h in sent), "the account writes to several people"
    assert any(h["Cc"] for h in headers)
    everything = " ".join(str(h[k]) for h in headers for k in ("From", "To", "Cc"))
    assert "jane.doe+work@gmail.com" in everything and "janedoe@gmail.com" in everything
    # The last message of some thread asks the account a direct question.
    roots, groups = _threads_by_headers(headers)
    last = [max(members) for members in groups.values()]
    asking = [
        parsed[i]
        for i in last
        if ACCOUNT in str(headers[i]["To"]) and "?" in _plain_texts([parsed[i]]).split("\n-- \n")[0]
    ]
    assert asking


@pytest.mark.parametrize("query", [("invoice", "march"), ("flight", "lisbon"), ("database", "migration")])
def test_topics_for_search(parsed: list[Message], query: tuple[str, ...]) -> None:
    found = [
        m for m in parsed if all(word in (str(m["Subject"]) + _plain_texts([m])).lower() for word in query)
    ]
    assert found, query
