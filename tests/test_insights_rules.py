from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.insights.rules import (
    SUMMARY_MAX_CHARS,
    asks_something,
    classify_message,
    due_phrase,
    thread_insight,
)
from pipeline.records import Address, ParsedMessage, ThreadMessageView

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def msg(sender: str = "alice@example.com", subject: str = "Lunch?", body: str = "", **fields: Any) -> ParsedMessage:
    return ParsedMessage(
        message_id="id@example.com",
        subject=subject,
        from_=Address("", sender),
        text=body,
        stripped=body,
        **fields,
    )


# --- classify_message ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (msg(), "personal"),
        (msg(body="Are we still on for Friday?"), "personal"),
        # bounces
        (msg("mailer-daemon@mx.example.com", "Undeliverable"), "bounce"),
        (msg("MAILER-DAEMON@example.com", "Mail delivery failed"), "bounce"),
        (msg("postmaster@example.com", "Delivery Status Notification"), "bounce"),
        (msg("x@example.com", "Returned", content_type="multipart/report"), "bounce"),
        # list mail
        (msg("news@shop.example", "Spring sale", list_unsubscribe="<mailto:u@shop.example>"), "newsletter"),
        (msg("editor@weekly.example", "Issue 42", list_id="<weekly.example>"), "newsletter"),
        (msg("dev@lists.example.org", "[dev] RFC", precedence="list"), "newsletter"),
        (msg("noreply@medium.com", "Daily digest", list_unsubscribe="<https://m.example/u>"), "newsletter"),
        (
            msg("notifications@github.com", "[org/repo] Fix bug (#12)", list_id="<repo.org.github.com>"),
            "notification",
        ),
        (
            msg("ci@example.com", "Build failed", list_id="<ci.example>", auto_submitted="auto-generated"),
            "notification",
        ),
        # automated without list headers
        (msg("noreply@accounts.example", "New sign-in from Linux"), "notification"),
        (msg("alerts@monitoring.example", "CPU high on db1"), "notification"),
        (msg("jira@company.example", "Ticket assigned", auto_submitted="auto-generated"), "notification"),
        (msg("bob@example.com", "Out of office", auto_submitted="auto-replied"), "notification"),
        # receipts, several languages
        (msg("orders@shop.example", "Your receipt from Shop"), "receipt"),
        (msg("billing@saas.example", "Invoice INV-2024-001"), "receipt"),
        (msg("shop@store.example", "Order confirmation #123"), "receipt"),
        (msg("pay@psp.example", "Payment received"), "receipt"),
        (msg("noreply@store.example", "Thanks for shopping", body="Your order has shipped."), "receipt"),
        (msg("rechnung@telekom.example", "Ihre Rechnung für März"), "receipt"),
        (msg("service@edf.example", "Votre facture est disponible"), "receipt"),
        (msg("no-reply@tienda.example", "Tu recibo de compra"), "receipt"),
        (msg("info@negozio.example", "La tua ricevuta"), "receipt"),
        (msg("shop@store.example", "Your receipt", list_unsubscribe="<mailto:u@store.example>"), "receipt"),
        # people talking about invoices are having a conversation
        (msg("bob@example.com", "Re: invoice for March", body="Looks fine."), "personal"),
        (msg("bob@example.com", "Lunch", body="Did you send the invoice?"), "personal"),
    ],
)
def test_classify_message(message: ParsedMessage, expected: str) -> None:
    assert classify_message(message) == expected


# --- thread_insight --------------------------------------------------------------------------


def view(
    text: str, *, me: bool = False, minutes: int = 0, category: str = "personal", subject: str = "Plan"
) -> ThreadMessageView:
    return ThreadMessageView(
        from_email="me@example.com" if me else "bob@example.com",
        from_me=me,
        date=T0 + timedelta(minutes=minutes),
        subject=subject,
        stripped=text,
        category=category,
    )


@pytest.mark.parametrize(
    ("messages", "category", "needs_reply"),
    [
        ([view("Can you send the slides?")], "personal", "to_reply"),
        ([view("Is the room booked?")], "personal", "to_reply"),
        ([view("Let me know what you think.")], "personal", "to_reply"),
        ([view("Pourriez-vous confirmer la date.")], "personal", "to_reply"),
        ([view("Merci de me renvoyer le contrat.")], "personal", "to_reply"),
        ([view("Können Sie mir das schicken.")], "personal", "to_reply"),
        ([view("Por favor envíame el archivo.")], "personal", "to_reply"),
        ([view("Thanks, all good.")], "personal", "fyi"),
        ([view("Merci de votre message.")], "personal", "fyi"),
        ([view("Please find attached the report.")], "personal", "fyi"),
        ([view("See https://example.com/page?id=3 for the notes.")], "personal", "fyi"),
        ([view("Can you send the slides?"), view("Here they are.", me=True, minutes=5)], "personal", "done"),
        ([view("Here they are."), view("Could you review them?", me=True, minutes=5)], "personal", "awaiting_reply"),
        # the caller's order does not matter, dates do
        ([view("Could you review them?", me=True, minutes=5), view("Here they are.")], "personal", "awaiting_reply"),
        (
            [view("Sale!", category="newsletter"), view("More sale?", category="newsletter", minutes=1)],
            "newsletter",
            "fyi",
        ),
        ([view("PR merged. Can you check?", category="notification")], "notification", "fyi"),
        ([view("Your receipt", category="receipt")], "receipt", "fyi"),
        ([view("Delivery failed", category="bounce")], "bounce", "fyi"),
        # the account answering a newsletter makes it a conversation
        (
            [view("Issue 3", category="newsletter"), view("Can I republish this?", me=True, minutes=1)],
            "personal",
            "awaiting_reply",
        ),
        # an automated message at the end of a conversation asks nothing of the account
        ([view("Lunch?"), view("Auto: out of office?", category="notification", minutes=1)], "personal", "fyi"),
        # the dominant category, ties going to the latest
        (
            [
                view("a", category="notification"),
                view("b", category="newsletter", minutes=1),
                view("c", category="newsletter", minutes=2),
            ],
            "newsletter",
            "fyi",
        ),
        ([view("a", category="newsletter"), view("b", category="receipt", minutes=1)], "receipt", "fyi"),
    ],
)
def test_thread_category_and_needs_reply(messages: list[ThreadMessageView], category: str, needs_reply: str) -> None:
    result = thread_insight(messages)
    assert (result.category, result.needs_reply) == (category, needs_reply)
    assert result.source == "rules"


def test_summary_is_subject_and_first_sentence_of_latest() -> None:
    messages = [
        view("Old news.", subject="Quarterly plan"),
        view("Hi Anna,\n\nThe budget is approved. Next steps below.", minutes=3, subject="RE: Re: Quarterly plan"),
    ]
    assert thread_insight(messages).summary == "Quarterly plan: The budget is approved."


def test_summary_is_capped() -> None:
    summary = thread_insight([view("word " * 200 + ".")]).summary
    assert len(summary) <= SUMMARY_MAX_CHARS
    assert summary.endswith("…")


def test_summary_without_text_is_the_subject() -> None:
    assert thread_insight([view("", subject="Fwd: Tickets")]).summary == "Tickets"


def test_action_items_from_latest_message_not_from_me() -> None:
    messages = [
        view("Can you book the room? Thanks.", minutes=0),
        view(
            "Hi,\nGreat meeting today. Could you send the deck by Friday? "
            "Please also review the budget before March 3. The rest can wait.",
            minutes=10,
        ),
        view("Sure, will do.", me=True, minutes=20),
    ]
    assert thread_insight(messages).action_items == [
        {"what": "Could you send the deck by Friday?", "who": "me", "due": "by Friday"},
        {"what": "Please also review the budget before March 3.", "who": "me", "due": "before March 3"},
    ]


def test_no_action_items_for_bulk_or_my_own_messages() -> None:
    assert thread_insight([view("Please click here.", category="newsletter")]).action_items == []
    assert thread_insight([view("Can you call me?", me=True)]).action_items == []


def test_empty_thread_is_an_error() -> None:
    with pytest.raises(ValueError):
        thread_insight([])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Can you send it by Friday?", "by Friday"),
        ("Please reply before March 3.", "before March 3"),
        ("Please reply before 3 March.", "before 3 March"),
        ("Send it by end of the week, please.", "by end of the week"),
        ("Could you do it by tomorrow?", "by tomorrow"),
        ("Please file it by 2024-05-01.", "by 2024-05-01"),
        ("Please pay by 15/04.", "by 15/04"),
        ("Merci de répondre avant lundi.", "avant lundi"),
        ("Bitte bis Freitag schicken.", "bis Freitag"),
        ("Bitte bis zum 3. März.", "bis zum 3. März"),
        ("¿Puedes enviarlo para mañana?", "para mañana"),
        ("Please send it soon.", ""),
        ("Can you raise it by 2.5%?", ""),
    ],
)
def test_due_phrase(text: str, expected: str) -> None:
    assert due_phrase(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What time?", True),
        ("Please advise.", True),
        ("¿Podrías llamarme?", True),
        ("Kannst du mir helfen.", True),
        ("Ok, thanks!", False),
        ("Details: https://x.example/?q=1", False),
        ("Please don't hesitate to reach out.", False),
        ("", False),
    ],
)
def test_asks_something(text: str, expected: bool) -> None:
    assert asks_something(text) is expected
