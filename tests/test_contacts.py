from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.contacts import (
    canonical_email,
    clean_display_name,
    combine_log,
    company_for,
    extract_participants,
    is_bulk,
    is_role_address,
    rank_key,
    rank_log_increment,
    rank_now,
    traffic_of,
)
from pipeline.records import Address, ParsedMessage, Participant

ME = frozenset({"Me.Myself+work@googlemail.com", "me@company.example"})
T0 = datetime(2024, 6, 1, tzinfo=UTC)


def msg(**fields: Any) -> ParsedMessage:
    fields.setdefault("message_id", "m1@example.com")
    fields.setdefault("subject", "Hello")
    fields.setdefault("from_", Address("Alice", "alice@example.com"))
    return ParsedMessage(**fields)


# --- canonical_email -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM ", "alice@example.com"),
        ("<bob@example.org>", "bob@example.org"),
        ("mailto:bob@example.org", "bob@example.org"),
        ("bob@example.org.", "bob@example.org"),
        ("first.last@example.com", "first.last@example.com"),  # dots matter outside Gmail
        ("first+tag@example.com", "first+tag@example.com"),  # so do tags
        ("First.Last@gmail.com", "firstlast@gmail.com"),
        ("f.i.r.s.t+news@gmail.com", "first@gmail.com"),
        ("first.last+a+b@GoogleMail.com", "firstlast@gmail.com"),
        ("jörg@müller.de", "jörg@müller.de"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("undisclosed-recipients", None),
        ("undisclosed-recipients:;", None),
        ("", None),
        ("   ", None),
        ("no-at-sign.example.com", None),
        ("two words@example.com", None),
        ("alice@exa mple.com", None),
        ("@example.com", None),
        ("alice@", None),
        ("alice@localhost", None),
        ("a@b@example.com", None),
        ("alice@-bad-.com", None),
        ("alice@example..com", None),
        (".alice@example.com", None),
        ("+tag@gmail.com", None),
        ("Alice <alice@example.com>", None),  # a header value, not an address
    ],
)
def test_canonical_email(raw: str, expected: str | None) -> None:
    assert canonical_email(raw) == expected


# --- role addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("noreply@github.com", True),
        ("no-reply@accounts.google.com", True),
        ("no_reply@example.com", True),
        ("do-not-reply@bank.example", True),
        ("donotreply@bank.example", True),
        ("do_not_reply@bank.example", True),
        ("mailer-daemon@googlemail.com", True),
        ("MAILER-DAEMON@mx.example.com", True),
        ("postmaster@example.com", True),
        ("notifications@github.com", True),
        ("notification@facebookmail.com", True),
        ("bounce@mail.example.com", True),
        ("bounces@lists.example.org", True),
        ("bounces+12345-abcd@sendgrid.net", True),
        ("python-dev-bounces@python.org", True),
        ("alerts@monitoring.example", True),
        ("billing-noreply@shop.example", True),
        ("noreply-calendar@google.com", True),
        ("msprvs1=abc=bounces-123@bounce.example", True),
        ("alice@example.com", False),
        ("norebecca@example.com", False),
        ("replyall@example.com", False),
        ("bouncer.jim@example.com", False),
        ("support@example.com", False),  # people answer support@: it is a real contact
        ("info@example.com", False),
        ("", False),
    ],
)
def test_is_role_address(email: str, expected: bool) -> None:
    assert is_role_address(email) is expected


# --- bulk ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"list_id": "<dev.lists.example.org>"}, True),
        ({"list_id": "   "}, False),
        ({"list_unsubscribe": "<mailto:unsub@example.com>"}, True),
        ({"precedence": "bulk"}, True),
        ({"precedence": "List"}, True),
        ({"precedence": "junk"}, True),
        ({"precedence": "first-class"}, False),
        ({"auto_submitted": "auto-generated"}, True),
        ({"auto_submitted": "auto-replied; owner-email=x@example.com"}, True),
        ({"auto_submitted": "no"}, False),
        ({"auto_submitted": "No"}, False),
        ({"content_type": "multipart/report"}, True),
        ({"content_type": "multipart/report; report-type=delivery-status"}, True),
        ({"content_type": "multipart/alternative"}, False),
    ],
)
def test_is_bulk(fields: dict[str, Any], expected: bool) -> None:
    assert is_bulk(msg(**fields)) is expected


# --- participants ----------------------------------------------------------------------------


def by_email(participants: list[Participant]) -> dict[str, Participant]:
    return {p.email: p for p in participants}


def test_received_message_sender_and_co_recipients() -> None:
    m = msg(
        from_=Address("Alice Smith", "Alice@Example.com"),
        to=[Address("", "me.myself@gmail.com"), Address("Bob", "bob@example.com")],
        cc=[Address("'Carol'", "carol@example.org"), Address("", "noreply@example.org")],
        reply_to=[Address("Alice", "alice@example.com")],
    )
    got = by_email(extract_participants(m, ME))
    assert set(got) == {"alice@example.com", "bob@example.com", "carol@example.org"}
    assert got["alice@example.com"] == Participant("alice@example.com", "Alice Smith", "from", "received")
    assert got["bob@example.com"] == Participant("bob@example.com", "Bob", "to", "received")
    assert got["carol@example.org"] == Participant("carol@example.org", "Carol", "cc", "received")
    assert traffic_of(got["alice@example.com"]) == "received"
    assert traffic_of(got["bob@example.com"]) is None  # seen, but did not write to the account


def test_sent_message_every_recipient_is_sent() -> None:
    m = msg(
        from_=Address("Me", "me@company.example"),
        to=[Address("Bob", "bob@example.com"), Address("Bob B.", "BOB@example.com")],
        cc=[Address("Dan", "d.a.n+x@googlemail.com"), Address("Me again", "memyself@gmail.com")],
    )
    got = extract_participants(m, ME)
    assert got == [
        Participant("bob@example.com", "Bob", "to", "sent"),
        Participant("dan@gmail.com", "Dan", "cc", "sent"),
    ]
    assert all(traffic_of(p) == "sent" for p in got)


def test_own_address_is_recognised_in_any_spelling() -> None:
    m = msg(from_=Address("", "MeMyself@gmail.com"), to=[Address("", "bob@example.com")])
    assert extract_participants(m, ME) == [Participant("bob@example.com", "", "to", "sent")]


def test_strongest_role_wins_and_borrows_a_missing_name() -> None:
    m = msg(
        from_=Address("", "alice@example.com"),
        to=[Address("", "me@company.example")],
        cc=[Address("Alice A.", "alice@example.com")],
        reply_to=[Address("", "alice@example.com")],
    )
    assert extract_participants(m, ME) == [Participant("alice@example.com", "Alice A.", "from", "received")]


def test_reply_to_outranks_to() -> None:
    m = msg(
        from_=Address("List", "alice@example.com"),
        to=[Address("", "team@example.com")],
        reply_to=[Address("Team", "team@example.com")],
    )
    roles = {p.email: p.role for p in extract_participants(m, ME)}
    assert roles == {"alice@example.com": "from", "team@example.com": "reply_to"}


@pytest.mark.parametrize(
    "fields",
    [
        {"list_id": "<announce.example.org>"},
        {"precedence": "bulk"},
        {"auto_submitted": "auto-replied"},
        {"content_type": "multipart/report"},
        {"from_": Address("GitHub", "notifications@github.com")},
        {"from_": Address("", "MAILER-DAEMON@example.com")},
    ],
)
def test_bulk_and_automated_mail_has_no_participants(fields: dict[str, Any]) -> None:
    m = msg(to=[Address("", "me@company.example"), Address("Bob", "bob@example.com")], **fields)
    assert extract_participants(m, ME) == []


def test_garbage_addresses_are_dropped() -> None:
    m = msg(to=[Address("", "undisclosed-recipients:;"), Address("", "")])
    assert [p.email for p in extract_participants(m, ME)] == ["alice@example.com"]


def test_message_without_sender() -> None:
    m = msg(from_=None, to=[Address("Bob", "bob@example.com")])
    assert extract_participants(m, ME) == [Participant("bob@example.com", "Bob", "to", "received")]


@pytest.mark.parametrize(
    ("name", "email", "expected"),
    [
        ("Alice Smith", "alice@example.com", "Alice Smith"),
        ('"Smith, Alice"', "alice@example.com", "Smith, Alice"),
        ("'Alice'", "alice@example.com", "Alice"),
        ("  Alice   Smith ", "alice@example.com", "Alice Smith"),
        ("alice@example.com", "alice@example.com", ""),
        ("'ALICE@example.com'", "alice@example.com", ""),
        ("<alice@example.com>", "alice@example.com", ""),
        ("", "alice@example.com", ""),
        ("=?utf-8?q?J=C3=B6rg_M=C3=BCller?=", "jorg@example.de", "Jörg Müller"),
        ("=?bogus?q?x?=", "x@example.de", "=?bogus?q?x?="),
    ],
)
def test_clean_display_name(name: str, email: str, expected: str) -> None:
    assert clean_display_name(name, email) == expected


# --- company ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("alice@example.com", "example.com"),
        ("alice@mail.eu.example.com", "example.com"),
        ("bob@news.bbc.co.uk", "bbc.co.uk"),
        ("bob@bbc.co.uk", "bbc.co.uk"),
        ("k@dept.uni-tokyo.ac.jp", "uni-tokyo.ac.jp"),
        ("x@example.com.au", "example.com.au"),
        ("x@gmail.com", None),
        ("x@googlemail.com", None),
        ("x@yahoo.com", None),
        ("x@yahoo.co.uk", None),
        ("x@hotmail.fr", None),
        ("x@outlook.com", None),
        ("x@live.co.uk", None),
        ("x@icloud.com", None),
        ("x@me.com", None),
        ("x@aol.com", None),
        ("x@protonmail.com", None),
        ("x@proton.me", None),
        ("x@gmx.de", None),
        ("x@web.de", None),
        ("x@yandex.ru", None),
        ("x@mail.ru", None),
        ("x@qq.com", None),
        ("x@163.com", None),
        ("x@fastmail.com", None),
        ("x@host.local", None),  # not a public suffix: no company
        ("x@co.uk", None),  # a public suffix alone is no registrable domain
        ("not-an-address", None),
    ],
)
def test_company_for(email: str, expected: str | None) -> None:
    assert company_for(email) == expected


# --- rank ------------------------------------------------------------------------------------


def score(*events: tuple[str, datetime]) -> float | None:
    total: float | None = None
    for direction, when in events:
        total = combine_log(total, rank_log_increment(direction, when))
    return total


def test_newer_outranks_older() -> None:
    assert rank_log_increment("received", T0) > rank_log_increment("received", T0 - timedelta(days=1))


def test_sent_weighs_twice_received() -> None:
    sent, received = rank_log_increment("sent", T0), rank_log_increment("received", T0)
    assert sent > received
    assert math.isclose(rank_now(sent, False, T0) / rank_now(received, False, T0), 2.0)


def test_rank_now_is_a_decayed_count() -> None:
    s = score(("received", T0), ("received", T0))
    assert math.isclose(rank_now(s, False, T0), 2.0)
    assert math.isclose(rank_now(s, False, T0 + timedelta(days=180)), 1.0)  # one half-life later
    assert math.isclose(rank_now(s, True, T0), 4.0)  # two-way traffic doubles
    assert rank_now(None, False, T0) == 0.0


def test_half_life_is_configurable() -> None:
    s = rank_log_increment("received", T0, half_life_days=30.0)
    assert math.isclose(rank_now(s, False, T0 + timedelta(days=30), half_life_days=30.0), 0.5)


def test_order_does_not_depend_on_now() -> None:
    contacts = {
        "old_heavy": score(*[("sent", T0 - timedelta(days=400 + i)) for i in range(20)]),
        "recent_light": score(("received", T0 - timedelta(days=3))),
        "two_way": score(("sent", T0 - timedelta(days=90)), ("received", T0 - timedelta(days=60))),
        "mid": score(("received", T0 - timedelta(days=30)), ("received", T0 - timedelta(days=31))),
    }
    two_way = {"two_way"}
    keys = {name: rank_key(s, name in two_way) for name, s in contacts.items()}
    by_key = sorted(contacts, key=lambda n: keys[n] or -math.inf)
    for now in (T0, T0 + timedelta(days=365), T0 + timedelta(days=3650), datetime(2199, 12, 31, tzinfo=UTC)):
        by_rank = sorted(contacts, key=lambda n: rank_now(contacts[n], n in two_way, now))
        assert by_rank == by_key


def test_combine_log_is_commutative_and_none_is_empty() -> None:
    a, b = rank_log_increment("sent", T0), rank_log_increment("received", T0 - timedelta(days=10))
    assert math.isclose(combine_log(a, b), combine_log(b, a))
    assert combine_log(None, a) == a
    assert math.isclose(combine_log(a, a), a + math.log(2.0))


def test_no_overflow_until_2200() -> None:
    late = datetime(2199, 12, 31, tzinfo=UTC)
    s = score(*[("sent", late - timedelta(days=i)) for i in range(1000)])
    assert s is not None and math.isfinite(s)
    assert math.isfinite(rank_now(s, True, late))
    assert 0.0 < rank_now(s, True, late) < 4000.0
    # A short half-life makes scores grow fastest: still finite.
    short = rank_log_increment("sent", late, half_life_days=1.0)
    assert math.isfinite(short) and math.isclose(rank_now(short, False, late, half_life_days=1.0), 2.0)
    # An absurd "now" centuries before the mail saturates instead of raising.
    assert math.isfinite(rank_now(short, False, datetime(1900, 1, 1, tzinfo=UTC), half_life_days=1.0))


def test_naive_datetimes_are_utc() -> None:
    assert rank_log_increment("sent", T0.replace(tzinfo=None)) == rank_log_increment("sent", T0)


@pytest.mark.parametrize("direction", ["", "from", "SENT"])
def test_unknown_direction_is_rejected(direction: str) -> None:
    with pytest.raises(ValueError):
        rank_log_increment(direction, T0)
