"""Quote, forward and signature stripping. Accuracy on real bodies is measured by bench/eval_replies.py;
these cases pin each rule, in several languages, and the false positives each rule must not have."""

from __future__ import annotations

import pytest

from pipeline.normalize.quotes import MAX_LINES, strip_reply

NEW = "Thanks, that works for me.\n\nSee you Monday."
OLD = "> Can we meet on Monday?\n>\n> Bob"

ATTRIBUTIONS = [
    ("english", "On Mon, Mar 1, 2021 at 10:00 AM Bob Smith <bob@example.com> wrote:"),
    ("english no colon", "On Wed, 14 Nov 2018 08:14:43 -0200 Bob <bob@example.com> wrote"),
    ("english date only", "On 04/19/2011 07:10 AM, Bob Smith wrote:"),
    ("french", "Le lun. 1 mars 2021 à 10:00, Bob Smith <bob@example.com> a écrit :"),
    ("german", "Am 01.03.2021 um 10:00 schrieb Bob Smith <bob@example.com>:"),
    ("german name first", "Bob Smith <bob@example.com> schrieb am Mo., 1. März 2021, 10:00:"),
    ("italian", "Il giorno lun 1 mar 2021 alle ore 10:00 Bob Smith <bob@example.com> ha scritto:"),
    ("portuguese", "Em seg., 1 de mar. de 2021 às 10:00, Bob Smith <bob@example.com> escreveu:"),
    ("spanish", "El lun, 1 mar 2021 a las 10:00, Bob Smith (<bob@example.com>) escribió:"),
    ("dutch", "Op ma 1 mrt. 2021 om 10:00 schreef Bob Smith <bob@example.com>:"),
    ("russian", "пн, 1 мар. 2021 г. в 10:00, Bob Smith <bob@example.com>:"),
    ("russian verb", "1 марта 2021 г., в 10:00, Боб <bob@example.com> написал(а):"),
    ("finnish", "ma 1. maalisk. 2021 klo 10.00 Bob Smith (bob@example.com) kirjoitti:"),
    ("norwegian", "man. 1. mar. 2021 kl. 10:00 skrev Bob Smith <bob@example.com>:"),
    ("danish", "Den man. 1. mar. 2021 kl. 10.00 skrev Bob Smith <bob@example.com>:"),
    ("swedish", "Den 1 mars 2021 10:00 skrev Bob Smith <bob@example.com>:"),
    ("polish", "W dniu 01.03.2021 o 10:00, Bob Smith <bob@example.com> pisze:"),
    ("polish napisał", "pon., 1 mar 2021 o 10:00 Bob Smith <bob@example.com> napisał(a):"),
    ("hungarian", "2021. márc. 1. 10:00 keltezéssel, Bob Smith <bob@example.com> írta:"),
    ("gmail date-address", "2021-03-01 10:00 GMT+01:00 Bob Smith <bob@example.com>:"),
    ("zoho dashes", "---- On Mon, 01 Mar 2021 10:00:00 +0100 bob@example.com wrote ----"),
    ("chinese", "在 2021年3月1日，上午10:00，Bob Smith <bob@example.com> 写道："),
]


@pytest.mark.parametrize(("language", "attribution"), ATTRIBUTIONS, ids=[a[0] for a in ATTRIBUTIONS])
def test_attribution_with_quote(language: str, attribution: str) -> None:
    assert strip_reply(f"{NEW}\n\n{attribution}\n{OLD}\n") == (NEW, None)


@pytest.mark.parametrize(("language", "attribution"), ATTRIBUTIONS, ids=[a[0] for a in ATTRIBUTIONS])
def test_attribution_over_unquoted_original(language: str, attribution: str) -> None:
    body = f"{NEW}\n\n{attribution}\n\nCan we meet on Monday?\n\nBob\n"
    assert strip_reply(body) == (NEW, None)


WRAPPED = [
    "On Mon, Mar 1, 2021 at 10:00 AM Bob Smith <\nbob@example.com> wrote:",
    "On Dec 16, 2011, at 12:47 PM, Bob Smith\n<bob@example.com>\nwrote:",
    "On Nov 21, 2014,\nat 10:18,\nBob Smith <bob@example.com> wrote:",
    "Le lun. 15 nov. 2021 à 19:42, Bob Smith <bob@example.com>\na écrit :",
    "Il giovedì 8 dicembre 2016, Bob Smith <bob@example.com>\nha scritto:",
    "Em 10 de julho de 2017 às 16:32:35, Bob Smith (\nbob@example.com) escreveu:",
    "Op 12 december 2016 19:05 schreef Bob Smith <\nbob@example.com>:",
    "pe 20. lokakuuta 2017 klo 17.50 Bob Smith\n<bob@example.com> kirjoitti:",
    "tir. 18. apr. 2017 kl. 13:09 skrev Bob Smith <bob@example.com\n>:",
]


@pytest.mark.parametrize("attribution", WRAPPED)
def test_attributions_wrapped_over_lines(attribution: str) -> None:
    assert strip_reply(f"{NEW}\n\n{attribution}\n\n{OLD}") == (NEW, None)


def test_attribution_without_blank_line_before_it() -> None:
    body = "First line.\nSecond line.\nOn Dec 15, 2024, at 3:00 PM, Bob <bob@example.com> wrote:\n> old"
    assert strip_reply(body) == ("First line.\nSecond line.", None)


HEADER_BLOCKS = [
    "From: Bob Smith <bob@example.com>\nSent: Monday, March 1, 2021 10:00 AM\nTo: Alice\nSubject: Monday",
    "-----Original Message-----\nFrom: bob@example.com\nSent: Monday, March 1, 2021 10:00 AM",
    "________________________________\nFrom: Bob Smith <bob@example.com>\nSent: Monday\nTo: Alice",
    "*From:* Bob Smith [mailto:bob@example.com]\n*Sent:* Monday, March 1, 2021\n*To:* Alice\n*Subject:* Hi",
    "From: Bob Smith\n<bob@example.com>\nSent: Monday, March 1, 2021 10:00 AM\nTo: Alice",
    "De : Bob Smith [mailto:bob@example.com]\nEnvoyé : lundi 1 mars 2021 10:00\nÀ : Alice\nObjet : Lundi",
    "Von: Bob Smith <bob@example.com>\nGesendet: Montag, 1. März 2021 10:00\nAn: Alice\nBetreff: Montag",
    "-----Ursprüngliche Nachricht-----\nVon: Bob Smith <bob@example.com>\nAn: Alice",
    "Van: Bob Smith [mailto:bob@example.com]\nVerzonden: maandag 1 maart 2021 10:00\nAan: Alice",
    "Da: Bob Smith <bob@example.com>\nInviato: lunedì 1 marzo 2021 10:00\nA: Alice\nOggetto: Lunedì",
    "De: Bob Smith <bob@example.com>\nEnviado: lunes, 1 de marzo de 2021 10:00\nPara: Alice\nAsunto: Lunes",
    "Fra: Bob Smith <bob@example.com>\nSendt: 1. marts 2021 10:00\nTil: Alice\nEmne: Mandag",
    "Från: Bob Smith <bob@example.com>\nSkickat: den 1 mars 2021 10:00\nTill: Alice\nÄmne: Måndag",
    "Od: Bob Smith <bob@example.com>\nWysłane: poniedziałek, 1 marca 2021 10:00\nDo: Alice\nTemat: Hej",
    "От: Bob Smith <bob@example.com>\nОтправлено: 1 марта 2021 г. 10:00\nКому: Alice\nТема: Привет",
    "-------- Oprindelig besked --------\nFra: Bob <bob@example.com>\nDato: 01.03.2021",
    "-------- Message d'origine --------\nDe : Bob <bob@example.com>\nDate : 01/03/21 10:00",
    "   De : Bob Smith <bob@example.com>\n   Envoyé le : lundi 1 mars 2021\n   À : Alice",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_outlook_header_blocks_end_the_reply(block: str) -> None:
    body = f"{NEW}\n\n{block}\n\nCan we meet on Monday?\n"
    assert strip_reply(body) == (NEW, None)


@pytest.mark.parametrize(
    "marker",
    [
        "---------- Forwarded message ---------",
        "-----Original Message-----",
        "----- Original Message -----",
        "-----original message-----",
        "Begin forwarded message:",
        "Début du message réexpédié :",
        "Anfang der weitergeleiteten Nachricht:",
        "---------- Weitergeleitete Nachricht ----------",
        "-------- Mensaje reenviado --------",
    ],
)
def test_forward_and_original_message_separators(marker: str) -> None:
    body = f"{NEW}\n\n{marker}\n\nOld text that is not new.\n"
    assert strip_reply(body) == (NEW, None)


def test_inline_replies_keep_new_lines_and_drop_quotes() -> None:
    body = (
        "On Dec 15, 2024, at 2:00 PM, Jane <jane@example.com> wrote:\n"
        "> Option A?\n\nA is great.\n\n> Option B?\n\nB has drawbacks.\n\n> Option C?\n\nC does not fit.\n"
    )
    assert strip_reply(body) == ("A is great.\n\nB has drawbacks.\n\nC does not fit.", None)


def test_bottom_post_keeps_greeting_and_answer() -> None:
    body = "Hi,\nOn Tue, 2011-03-01 at 18:02 +0530, Bob wrote:\n> question?\n\nThe answer.\n\n> -Bob\n"
    assert strip_reply(body) == ("Hi,\n\nThe answer.", None)


def test_quoter_wrapped_lines_inside_a_quote_are_quoted() -> None:
    long_line = "> " + "word " * 15
    body = f"{NEW}\n\nOn Mon, 1 Mar 2021 at 10:00, Bob <b@example.com> wrote:\n{long_line}\nwrapped tail\n>\n"
    assert strip_reply(body) == (NEW, None)


def test_nested_quotes() -> None:
    quote = "> hi\n> On 28 Feb 2021, Al <a@x.com> wrote:\n>> older\n"
    body = f"{NEW}\n\nOn 1 Mar 2021, Bob <b@example.com> wrote:\n{quote}"
    assert strip_reply(body) == (NEW, None)


@pytest.mark.parametrize(
    ("body", "text", "signature"),
    [
        ("Reply.\n\n-- \nBob Smith\nACME Corp", "Reply.", "Bob Smith\nACME Corp"),
        ("Reply.\n--\nrick", "Reply.", "rick"),
        ("Reply.\n\nSent from my iPhone", "Reply.", "Sent from my iPhone"),
        (
            "Reply.\n\nSent from my Verizon Wireless BlackBerry",
            "Reply.",
            "Sent from my Verizon Wireless BlackBerry",
        ),
        (
            "Reply.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>",
            "Reply.",
            "Get Outlook for iOS<https://aka.ms/o0ukef>",
        ),
        ("Reply.\n\nGesendet von meinem iPad", "Reply.", "Gesendet von meinem iPad"),
        ("Reply.\n\nVon meinem iPhone gesendet", "Reply.", "Von meinem iPhone gesendet"),
        ("Reply.\n\nEnvoyé de mon iPhone", "Reply.", "Envoyé de mon iPhone"),
        ("Reply.\n\nEnviado desde mi iPhone", "Reply.", "Enviado desde mi iPhone"),
        ("Reply.\n\nInviato da iPhone", "Reply.", "Inviato da iPhone"),
        ("Reply.\n\nVerzonden vanaf mijn iPhone", "Reply.", "Verzonden vanaf mijn iPhone"),
        ("🎉\n\n—\nJohn Doe\nCEO at Pandaland", "🎉", "John Doe\nCEO at Pandaland"),
        (
            "Reply.\n\n__\nriak-users mailing list\nhttp://lists.example.com",
            "Reply.",
            "riak-users mailing list\nhttp://lists.example.com",
        ),
        (
            "Thanks!\n\nBest regards,\nJohn\n\n--\nJohn Doe\n\nSent from my iPhone",
            "Thanks!\n\nBest regards,\nJohn",
            "John Doe\n\nSent from my iPhone",
        ),
        ("Reply.\n\n-- \nBob\n\nOn 1 Mar 2021, Al <a@x.com> wrote:\n> old", "Reply.", "Bob"),
    ],
)
def test_signatures(body: str, text: str, signature: str) -> None:
    assert strip_reply(body) == (text, signature)


def test_mobile_tagline_ends_the_reply_even_above_an_unquoted_original() -> None:
    assert strip_reply("Reply.\n\nSent from my Wiko\n\nThe original, pasted unquoted.") == (
        "Reply.",
        "Sent from my Wiko",
    )


NOT_MARKERS = [
    "On the other hand, this is just prose.\nOn average it works.",
    "On Thursday:\n\nnotes for the day.\n\nOn Friday:\n\nmore notes.",
    "He wrote: the plan is fine.\nWe agreed.",
    'Check https://example.com/on-date-someone-wrote-about-parsing and "wrote:" in text.',
    "I need emails that come from: john@example.com and from: jane@example.com",
    "The notification was sent from my iPhone app.\nThis was sent from our server, not Sent from my iPad.",
    "Sent from my desk, is much easier than my mobile phone.",
    "## Key points\n----\n\n1. Faster\n\n----\n\nThe dashes are markdown.\n\n====\n\nSo are these.",
    "Here is the code:\n\n```\n$ ls\n> output line\n--\nsignature: '--'\n```\n\nDone.",
    "Timestamps: 2024-01-15 14:30:25, 15.01.2024 14:30, Jan 15, 2024 at 14:30",
    "I wanted to respond to your points:",
    "Regards,\n\nJohn Doe\nCEO @ Acme !",
    "Items:\n-- first point\n-- second point",
    "From: the team\nWe all agree.",
]


@pytest.mark.parametrize("body", NOT_MARKERS)
def test_prose_that_only_looks_like_markers_is_kept(body: str) -> None:
    assert strip_reply(body) == (body, None)


def test_mbox_from_escape_is_not_a_quote() -> None:
    body = "Runbook is on the wiki.\n\n>From now on use #ops for updates.\n\nTom"
    assert strip_reply(body) == ("Runbook is on the wiki.\n\nFrom now on use #ops for updates.\n\nTom", None)
    quoted = "Agreed.\n\n> You said:\n>From the start it was late.\n> Bob"
    assert strip_reply(quoted) == ("Agreed.", None)


def test_quotes_without_attribution_are_dropped() -> None:
    body = "I wanted to respond:\n\n> quoted one\n> two\n\nMy response.\n\n> more\n\nFinal thoughts."
    assert strip_reply(body) == ("I wanted to respond:\n\nMy response.\n\nFinal thoughts.", None)


def test_line_endings_and_whitespace_are_normalized() -> None:
    body = (
        "Reply line.   \r\n\r\n\r\n\r\nSecond.\r\n\r\nOn 1 Mar 2021, Bob <b@example.com> wrote:\r\n> old\r\n"
    )
    assert strip_reply(body) == ("Reply line.\n\nSecond.", None)


def test_long_bodies_are_analysed_up_to_the_cap_and_quotes_past_it_still_go() -> None:
    prose = "\n".join(f"Line {i} of a very long message." for i in range(MAX_LINES + 500))
    assert strip_reply(prose + "\n> quoted after the cap\n")[0] == prose


def test_quote_header_past_the_cap_is_not_searched_for() -> None:
    prose = "\n".join(f"Line {i}." for i in range(MAX_LINES + 10))
    body = prose + "\nOn 1 Mar 2021, Bob <b@example.com> wrote:\n\nunquoted old text"
    assert strip_reply(body)[0].endswith("unquoted old text")


def test_empty_and_quote_only_bodies() -> None:
    assert strip_reply("") == ("", None)
    assert strip_reply("> only a quote\n> here") == ("", None)
