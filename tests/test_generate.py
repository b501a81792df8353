"""The synthetic mailbox generator: deterministic, exact, streaming, and internally consistent."""

from __future__ import annotations

import email
import io
import json
import mailbox
import re
import tracemalloc
from collections import Counter, defaultdict
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import pytest

from bench.generate import (
    GenerationStats,
    api_label_ids,
    generate_mbox,
    gmail_canonical,
    iter_messages,
    main,
    mboxrd_escape,
    write_mbox,
)

_IDS = re.compile(r"<([^<>\s]+)>")
_POSTMARK = re.compile(rb"^From (\d+)@xxx \w{3} \w{3} \d\d \d\d:\d\d:\d\d \+0000 \d{4}\n$")
_HEADERS = BytesHeaderParser(policy=compat32)


@pytest.fixture(scope="module")
def mbox_3000(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationStats]:
    path = tmp_path_factory.mktemp("gen") / "3000.mbox"
    return path, generate_mbox(path, 3000, seed=3)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / "a.mbox", tmp_path / "b.mbox", tmp_path / "c.mbox"]
    generate_mbox(paths[0], 400, seed=1)
    generate_mbox(paths[1], 400, seed=1)
    generate_mbox(paths[2], 400, seed=2)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_account_changes_addresses_not_determinism(tmp_path: Path) -> None:
    messages = list(iter_messages(200, seed=1, account="someone@corp.example"))
    received = [m for m in messages if m.meta.direction == "received" and m.meta.kind == "conversation"]
    assert received and all(b"Delivered-To: someone@corp.example" in m.raw for m in received)
    assert [m.raw for m in iter_messages(200, seed=1, account="someone@corp.example")] == [
        m.raw for m in messages
    ]


@pytest.mark.parametrize("count", [0, 1, 2, 7, 251])
def test_count_is_exact(tmp_path: Path, count: int) -> None:
    path = tmp_path / "n.mbox"
    stats = generate_mbox(path, count, seed=count)
    assert stats.messages == count
    assert len(mailbox.mbox(path)) == count
    assert stats.bytes == path.stat().st_size


def test_streamed_file_parses_and_matches_stats(mbox_3000: tuple[Path, GenerationStats]) -> None:
    path, stats = mbox_3000
    ids: Counter[str] = Counter()
    without = 0
    threads: set[str] = set()
    for entry in mailbox.mbox(path):
        headers = _HEADERS.parsebytes(entry.as_bytes())
        found = _IDS.findall(str(headers.get("Message-ID", "") or ""))
        if found:
            ids[found[0]] += 1
        else:
            without += 1
        assert headers["X-GM-THRID"] and headers["X-Gmail-Labels"]
        threads.add(str(headers["X-GM-THRID"]))
    assert sum(ids.values()) + without == stats.messages == 3000
    assert len(ids) == stats.distinct_message_ids
    assert without == stats.without_message_id
    assert sum(ids.values()) - len(ids) == stats.duplicates
    assert len(threads) == stats.threads
    assert stats.bytes == path.stat().st_size
    # The rates the brief asks for: about 1% without Message-ID, about 0.5% duplicates.
    assert 0.004 < stats.without_message_id / 3000 < 0.02
    assert 0.002 < stats.duplicates / 3000 < 0.01


def test_postmarks_and_mboxrd_escaping_round_trip(mbox_3000: tuple[Path, GenerationStats]) -> None:
    """Split on postmarks, undo one `>` on `>+From ` lines: the bytes iter_messages yielded come back."""
    path, _ = mbox_3000
    data = path.read_bytes()
    entries: list[list[bytes]] = []
    for line in data.splitlines(keepends=True):
        if _POSTMARK.match(line):
            entries.append([])
        else:
            entries[-1].append(line[1:] if re.match(rb"^>+From ", line) else line)
    originals = [m.raw for m in iter_messages(3000, seed=3)]
    assert len(entries) == len(originals)
    assert [b"".join(lines) for lines in entries] == [raw + b"\n" for raw in originals]
    assert re.search(rb"^>From ", data, re.MULTILINE), "the sample should exercise the escaping"
    assert not re.search(rb"^From (?!\d+@xxx )", data, re.MULTILINE)


def test_mboxrd_escape_adds_one_bracket() -> None:
    assert (
        mboxrd_escape(b"a\nFrom here\n>From there\nnot From\n") == b"a\n>From here\n>>From there\nnot From\n"
    )


def test_reply_headers_point_back_into_their_thread() -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    replies = 0
    for message in iter_messages(3000, seed=4):
        headers = _HEADERS.parsebytes(message.raw)
        thread = str(headers["X-GM-THRID"])
        assert thread == message.gmail_thread_id
        in_reply_to = _IDS.findall(str(headers.get("In-Reply-To", "") or ""))
        references = _IDS.findall(str(headers.get("References", "") or ""))
        for parent in in_reply_to + references:
            assert parent in seen[thread], f"{parent} is not an earlier message of thread {thread}"
        if in_reply_to:
            replies += 1
            assert references[-1] == in_reply_to[0]
            assert message.meta.in_reply_to == in_reply_to[0]
        mid = _IDS.findall(str(headers.get("Message-ID", "") or ""))
        assert (mid[0] if mid else None) == message.meta.message_id
        if mid:
            seen[thread].add(mid[0])
    assert replies > 800


def test_thread_ids_are_gmail_ids_of_first_messages() -> None:
    first: dict[str, str] = {}
    for message in iter_messages(1000, seed=5):
        if message.meta.thread_position == 0 and not message.meta.is_duplicate:
            first[message.gmail_thread_id] = message.gmail_message_id
    assert all(int(tid) == int(gid, 16) for tid, gid in first.items())
    ids = [m.gmail_message_id for m in iter_messages(1000, seed=5)]
    assert len(set(ids)) == len(ids)


def test_realism_features() -> None:
    messages = list(iter_messages(3000, seed=6))
    metas = [m.meta for m in messages]
    charsets = {m.charset for m in metas}
    assert {"utf-8", "iso-8859-1", "windows-1252", "koi8-r", "shift_jis"} <= charsets
    assert {"7bit", "8bit", "quoted-printable", "base64"} <= {m.transfer_encoding for m in metas}
    assert {"text", "alternative", "html", "report"} <= {m.structure for m in metas}
    assert {"conversation", "newsletter", "notification", "receipt", "bounce"} <= {m.kind for m in metas}
    assert {"en", "fr", "de", "es", "it", "pt"} <= {m.language for m in metas}
    assert {"sent", "received"} == {m.direction for m in metas}
    assert any(m.has_attachment for m in metas) and any(m.is_forward for m in metas)
    assert any(m.asks_question for m in metas)
    assert max(m.thread_position for m in metas) >= 6
    assert len({m.topic for m in metas if m.kind == "conversation"}) >= 12
    raws = b"\n".join(m.raw for m in messages)
    for marker in (
        b"List-Unsubscribe:",
        b"Precedence: bulk",
        b"multipart/report",
        b"message/delivery-status",
        b"-- \n",
        b"---------- Forwarded message ---------",
        b"Delivered-To:",
        b"=?UTF-8?",
        b"mailer-daemon@googlemail.com",
        b"notifications@github.com",
    ):
        assert marker in raws, marker
    # The same gmail.com person written two ways, and non-ASCII display names.
    written: dict[str, set[str]] = defaultdict(set)
    for meta in metas:
        for party in (meta.sender, *meta.to, *meta.cc):
            if party.canonical.endswith("@gmail.com"):
                written[party.canonical].add(party.email)
    assert any(len(forms) > 1 for forms in written.values())
    assert any(not m.sender.name.isascii() for m in metas)


def test_every_message_parses_with_the_standard_library() -> None:
    """Only the deliberately broken `unlisted-recipients` To header may trip policy.default."""
    for message in iter_messages(1500, seed=7):
        parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
        body = parsed.get_body(("plain", "html"))
        assert body is not None
        assert body.get_content()
        try:
            str(parsed["To"])
        except AttributeError:
            assert b"unlisted-recipients:;" in message.raw


def test_memory_does_not_grow_with_count() -> None:
    def peak(count: int) -> int:
        tracemalloc.start()
        write_mbox(iter_messages(count, seed=8), _Sink())  # type: ignore[arg-type]
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return high

    small, large = peak(500), peak(2500)
    assert large < small * 1.5 + 512 * 1024, (small, large)


class _Sink(io.RawIOBase):
    """A write-only file that keeps nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


def test_cli_prints_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.mbox"
    assert (
        main([str(out), "--count", "50", "--seed", "9", "--json", "--meta", str(tmp_path / "meta.jsonl")])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == 50 and report["bytes"] == out.stat().st_size
    records = [json.loads(line) for line in (tmp_path / "meta.jsonl").read_text().splitlines()]
    assert len(records) == 50 and {"topic", "facets", "sender", "labels", "gmail_thread_id"} <= set(
        records[0]
    )


def test_helpers() -> None:
    assert gmail_canonical("Jane.Doe+work@GoogleMail.com") == "janedoe@gmail.com"
    assert gmail_canonical("Jane.Doe+x@example.com") == "jane.doe+x@example.com"
    assert api_label_ids(["Inbox", "Opened", "Category Updates", "Work/Projects"]) == (
        "INBOX",
        "CATEGORY_UPDATES",
        "Label_Work_Projects",
    )


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError):
        iter_messages(-1)
