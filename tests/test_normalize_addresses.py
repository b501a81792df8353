"""Address lists read without the header registry must read exactly as the registry reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.generate import iter_messages
from pipeline.normalize.feedparse import message_from_bytes
from pipeline.normalize.headers import (
    _ADDRESS_HEADERS,
    _SIMPLE_ADDRESS_LIST_RE,
    raw_headers,
    registry_addresses,
    simple_addresses,
)
from pipeline.normalize.mime_policy import POLICY
from pipeline.sources.mbox import iter_messages as mbox_messages
from pipeline.sources.mbox import open_mbox

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "samples" / "sample.mbox"


def _corpus() -> Iterator[bytes]:
    for seed in (1, 2, 3):
        for generated in iter_messages(2000, seed=seed):
            yield generated.raw
    for entry in mbox_messages(open_mbox(SAMPLE)):
        assert entry.raw is not None
        yield entry.raw


def test_the_fast_path_reads_what_the_registry_reads() -> None:
    simple = slow = 0
    for raw in _corpus():
        msg = message_from_bytes(raw, POLICY)
        headers = raw_headers(msg, [])
        for name in _ADDRESS_HEADERS:
            values = headers.get(name, [])
            if not values:
                continue
            if not all(_SIMPLE_ADDRESS_LIST_RE.fullmatch(v) for v in values):
                slow += 1
                continue
            simple += 1
            fast_defects: list[str] = []
            registry_defects: list[str] = []
            fast = simple_addresses(values, name.title(), fast_defects)
            assert fast == registry_addresses(msg, name, values, registry_defects), values
            assert fast_defects == registry_defects, values
    # Most lists take the fast path (the point of it), and the corpus still exercises the registry.
    assert simple > 5 * slow > 0, (simple, slow)


@pytest.mark.parametrize("value", [
    '"Murphy, Ava" <avam@fjord.com>, weij@fjord.com',
    "=?UTF-8?Q?J=C3=B6rg_Sch=C3=A4fer?= <jschafer@northwind.io>",
    "=?Windows-1252?Q?=C9lodie_Martin?= <elodie@kestrel.io>,\n Emma Clarke <emmac@fjord.io>",
    "helios-labs/data-pipeline <data-pipeline@noreply.github.com>",
    "O'Brien + Co <ob@example.com>",
    "  Ann   Lee  <ann@example.com> ,bob@example.com,",
    "Ann\tLee <ann@example.com>,\n\t\"Lee, Ann\" <a2@example.com>",
    '"  spaced   out  " <s@example.com>',
    "<only@example.com>",
])
def test_names_with_quotes_atoms_and_one_encoded_word_take_the_fast_path(value: str) -> None:
    assert _SIMPLE_ADDRESS_LIST_RE.fullmatch(value)
    raw = f"From: {value}\nSubject: x\n\nbody\n".encode()
    msg = message_from_bytes(raw, POLICY)
    values = raw_headers(msg, [])["from"]
    fast_defects: list[str] = []
    registry_defects: list[str] = []
    assert simple_addresses(values, "From", fast_defects) == registry_addresses(msg, "from", values, registry_defects)
    assert fast_defects == registry_defects


@pytest.mark.parametrize("value", [
    "undisclosed-recipients:;",  # a group
    "bob@example.com (Bob Smith)",  # a comment
    '"Ann \\"the boss\\" Lee" <ann@example.com>',  # an escape
    "=?UTF-8?Q?Ann?= =?UTF-8?Q?_Lee?= <ann@example.com>",  # adjacent encoded words
    '"=?UTF-8?Q?Ann?=" <ann@example.com>',  # an encoded word in quotes
    "Ann Lee <ann@example.com",  # unbalanced
    "J. R. Smith <j@example.com>",  # a period in a name: the registry notes it
])
def test_what_the_registry_must_read_does_not_take_the_fast_path(value: str) -> None:
    assert not _SIMPLE_ADDRESS_LIST_RE.fullmatch(value)
