"""Write the bundled sample mailbox `pipeline/samples/sample.mbox` and its README.

The sample is small enough to commit and read by eye (about fifty messages), hand-written rather
than generated, and covers the cases `mailpipe demo` should show off and the normalizer must survive:
replies quoted in six languages, a forward, a newsletter, a bounce, non-UTF-8 charsets, a thread
that only References/In-Reply-To can rebuild, a message without Message-ID, an exact duplicate,
a broken To header, receipts and notifications, mail the account sent, and a question awaiting an
answer. Every byte is fixed, so the file is rebuilt identically; the counts printed (and written to
the README) are computed by parsing the file back, not typed by hand.

    python -m bench.make_sample            # writes pipeline/samples/sample.mbox and README.md
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import mailbox
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from pathlib import Path

from bench.generate import encode_header_text, format_address, mboxrd_escape

ACCOUNT = "me@example.com"
ACCOUNT_NAME = "Alex Morgan"
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "samples"
_IDS = re.compile(r"<([^<>\s]+)>")

# ---------------------------------------------------------------------------------------------
# MIME building blocks. Written by hand rather than with email.message so every byte is chosen:
# 8bit bodies in legacy charsets, a deliberately broken header, exact boundaries.


@dataclass(frozen=True, slots=True)
class Body:
    """A MIME entity without its message headers: its own content headers and encoded payload."""

    headers: tuple[tuple[str, str], ...]
    payload: bytes


_CODECS = {
    "utf-8": "utf-8",
    "iso-8859-1": "latin-1",
    "windows-1252": "cp1252",
    "koi8-r": "koi8_r",
    "shift_jis": "shift_jis",
}


def text(content: str, *, subtype: str = "plain", charset: str = "utf-8", cte: str = "7bit") -> Body:
    data = content.encode(_CODECS[charset])
    if cte == "quoted-printable":
        data = binascii.b2a_qp(data)
    elif cte == "base64":
        data = base64.encodebytes(data)
    elif cte == "7bit" and not data.isascii():
        raise ValueError("7bit body with non-ASCII bytes")
    label = "UTF-8" if charset == "utf-8" else charset
    return Body(
        (("Content-Type", f'text/{subtype}; charset="{label}"'), ("Content-Transfer-Encoding", cte)), data
    )


def html_of(content: str) -> str:
    """A Gmail-like HTML rendering of plain text, with `>` quotes as a blockquote."""
    lines = content.split("\n")
    out: list[str] = []
    quote: list[str] = []
    for line in lines + [""]:
        if line.startswith(">"):
            quote.append(_esc(line[1:].lstrip(" ")))
            continue
        if quote:
            out.append(
                '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid '
                'rgb(204,204,204);padding-left:1ex">' + "<br>\n".join(quote) + "</blockquote>"
            )
            quote = []
        out.append(f"<div>{_esc(line)}</div>" if line else "<div><br></div>")
    return '<div dir="ltr">' + "\n".join(out[:-1]) + "</div>\n"


def _esc(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def multipart(subtype: str, boundary: str, parts: Sequence[Body], params: str = "") -> Body:
    chunks = []
    for part in parts:
        head = "".join(f"{k}: {v}\n" for k, v in part.headers)
        payload = part.payload if part.payload.endswith(b"\n") else part.payload + b"\n"
        chunks.append(f"--{boundary}\n{head}\n".encode("ascii") + payload)
    payload = b"\n".join(chunks) + f"\n--{boundary}--\n".encode("ascii")
    return Body((("Content-Type", f'multipart/{subtype}; boundary="{boundary}"{params}'),), payload)


def alternative(plain: str, boundary: str, *, charset: str = "utf-8", cte: str = "quoted-printable") -> Body:
    return multipart(
        "alternative",
        boundary,
        [
            text(plain, charset=charset, cte=cte),
            text(html_of(plain), subtype="html", charset=charset, cte=cte),
        ],
    )


def attachment(filename: str, content_type: str, data: bytes) -> Body:
    return Body(
        (
            ("Content-Type", f'{content_type}; name="{filename}"'),
            ("Content-Disposition", f'attachment; filename="{filename}"'),
            ("Content-Transfer-Encoding", "base64"),
        ),
        base64.encodebytes(data),
    )


def fake_pdf(title: str) -> bytes:
    """A tiny but well-formed PDF, so attachment sizes and magic bytes look right."""
    return (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Title (" + title.encode("ascii") + b") >>\nendobj\n"
        b"trailer\n<< /Info 1 0 R >>\n%%EOF\n"
    )


def quote(content: str) -> str:
    return "\n".join("> " + ln if ln else ">" for ln in content.rstrip("\n").split("\n"))


def addr(name: str, email: str, charset: str = "utf-8", q: bool = False) -> str:
    return format_address(name, email, charset, q)


# ---------------------------------------------------------------------------------------------
# Messages.


@dataclass(frozen=True, slots=True)
class Sample:
    raw: bytes  # without the Takeout headers, which depend on the whole mailbox
    date: datetime
    labels: tuple[str, ...]
    thread: str | None  # X-GM-THRID group; None leaves the header out


@dataclass(slots=True)
class Mailbox:
    messages: list[Sample] = field(default_factory=list)

    def add(
        self,
        *,
        frm: str,
        subject: str,
        date: str,
        body: Body,
        labels: Sequence[str],
        thread: str | None,
        to: str | None = None,
        cc: str | None = None,
        message_id: str | None = None,
        in_reply_to: str | None = None,
        references: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
        received: bool = True,
        subject_charset: str = "utf-8",
    ) -> bytes:
        headers: list[tuple[str, str]] = []
        if received:
            headers.append(("Delivered-To", ACCOUNT))
            sender = _IDS.findall(frm) or [frm]
            headers.append(
                (
                    "Received",
                    f"by 2002:a05:7010:3c8b:b0:2f1:5a2e:{len(self.messages):x} with SMTP id "
                    f"q{len(self.messages)}csp{1200 + len(self.messages)};\n        {date}",
                )
            )
            headers.append(("Return-Path", f"<{sender[0]}>"))
        headers.append(("MIME-Version", "1.0"))
        if references:
            headers.append(("References", "\n ".join(f"<{r}>" for r in references)))
        if in_reply_to:
            headers.append(("In-Reply-To", f"<{in_reply_to}>"))
        headers.append(("From", frm))
        headers.append(("Date", date))
        if message_id:
            headers.append(("Message-ID", f"<{message_id}>"))
        headers.append(("Subject", encode_header_text(subject, subject_charset)))
        if to is not None:
            headers.append(("To", to))
        if cc:
            headers.append(("Cc", cc))
        headers.extend(extra)
        headers.extend(body.headers)
        raw = "".join(f"{k}: {v}\n" for k, v in headers).encode("ascii") + b"\n" + body.payload
        self.messages.append(Sample(raw, parsedate_to_datetime(date).astimezone(UTC), tuple(labels), thread))
        return raw

    def repeat(self, raw: bytes) -> None:
        """The same bytes again, as Takeout and an API catch-up both delivering one message produce."""
        original = next(m for m in self.messages if m.raw == raw)
        self.messages.append(original)


ME = addr(ACCOUNT_NAME, ACCOUNT)
TOM = addr("Tom Becker", "tom.becker@northwind.io")
LUKASZ = addr("Łukasz Wiśniewski", "lukasz.wisniewski@baltic-labs.pl")
PRIYA = addr("Priya Patel", "priya.patel@example.com")
MARIE = addr("Marie Lefèvre", "marie.lefevre@soleil-conseil.fr", "iso-8859-1", q=True)
JURGEN = addr("Jürgen Müller", "j.mueller@nordlicht-systems.de", "iso-8859-1", q=True)
JOSE = addr("José García", "jose.garcia@andes-logistica.es")
INES = addr("Inês Costa", "ines.costa@sapo.pt")
JANE_WORK = addr("Jane Doe", "jane.doe+work@gmail.com")
JANE = addr("Jane Doe", "janedoe@gmail.com")
OLGA = addr("Ольга Иванова", "olga.ivanova@mail.ru", "koi8-r")
TANAKA = addr("田中 太郎", "tanaka@sakura-robotics.co.jp", "shift_jis")
FRANCOIS = addr("François Dubois", "francois.dubois@lumina.fr", "windows-1252", q=True)
ZOE = addr("Zoë Clarke", "zoe.clarke@bluefin.io")
SAM = addr("Sam Chen", "sam.chen@kestrel-talent.com")
GIULIA = addr("Giulia Rossi", "giulia.rossi@libero.it")
BOB = addr("Bob Hughes", "bob@cedar-accounting.co.uk")
DANIEL = addr("Daniel Reid", "daniel.reid@example.com")
EMMA = addr("Emma Kim", "emma.kim@example.com")
SOFIA = addr("Sofía Núñez", "sofia.nunez@example.com")

SIG_ME = "-- \nAlex Morgan\nHead of Platform, Example Inc.\n+1 415 555 0100"


def build_mailbox() -> Mailbox:
    box = Mailbox()
    _migration_thread(box)
    _invoice_thread_fr(box)
    _workshop_thread_de(box)
    _contract_thread_es(box)
    _lisbon_thread(box)
    _receipts(box)
    _forward(box)
    _newsletters(box)
    _bounce(box)
    _legacy_charsets(box)
    _odd_messages(box)
    _notifications(box)
    _offsite_thread(box)
    _jane_threads(box)
    _questions(box)
    _italian_thread(box)
    return box


def _migration_thread(box: Mailbox) -> None:
    """Seven messages tied together only by References/In-Reply-To: no X-GM-THRID on any of them."""
    ids = [
        "CAKp3vQx7nWm2r5FtB9dZk1LhQe8s0Gq@mail.gmail.com",
        "5f1c2a9e-8b7d-4c3e-9a61-2d4b7e0c9f13@baltic-labs.pl",
        "CAF2mR8yXh0Tz4Jw6kVbN3pLq7Es1aDg@mail.gmail.com",
        "CAH7dW1sQe4Rk9Lm2Nb5Vx8Zc3Yf6Tg0@mail.gmail.com",
        "CAKp3vQz1mNq8Ys4Ht7Wr2Jc5Lb9Xe6D@mail.gmail.com",
        "9d3e7f21-4a5b-4c8d-b2e1-6f0a9c8b7d54@baltic-labs.pl",
        "CAF2mR8wPq5Hn1Ks3Lt6Vy9Bd2Gz4Jx7@mail.gmail.com",
    ]
    subject = "Database migration: orders to PostgreSQL 16"
    t1 = (
        "Hi Alex,\n\nWe'd like to run the database migration for the orders database (PostgreSQL 13 to 16)\n"
        "on Saturday 16 March, 22:00-02:00 CET. The dry run on staging took 3h10m, most of it\n"
        "rebuilding indexes.\n\nPlan:\n1. Snapshot at 21:45\n2. Logical replication to the new cluster, "
        "cut over at 23:30\n3. Keep the old cluster read-only for a week so we can roll back\n\n"
        "Łukasz from Baltic Labs will be on call with us.\n\nThanks,\nTom\n\n-- \nTom Becker\n"
        "Platform Engineering, Northwind\n"
    )
    box.add(
        frm=TOM,
        to=ME,
        cc=f"{LUKASZ}, {PRIYA}",
        subject=subject,
        date="Mon, 4 Mar 2024 09:12:40 +0000",
        message_id=ids[0],
        body=text(t1, cte="quoted-printable"),
        labels=("Inbox", "Important", "Opened"),
        thread=None,
    )
    t2 = (
        "Confirmed, I'm on call that night.\n\nOne thing: replication lag peaked at 40 s during the "
        "dry run,\n"
        "so we should pause the billing workers before the cut-over.\n\nŁukasz\n\n"
        f"On 04/03/2024 09:12, Tom Becker wrote:\n{quote(t1)}\n"
    )
    box.add(
        frm=LUKASZ,
        to=TOM,
        cc=f"{ME}, {PRIYA}",
        subject="Re: " + subject,
        date="Mon, 4 Mar 2024 10:03:55 +0100",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=text(t2, cte="8bit"),
        labels=("Inbox", "Opened"),
        thread=None,
        extra=(("User-Agent", "Mozilla Thunderbird"),),
    )
    t3 = (
        "Thanks both, Saturday works for us.\n\nPriya, can you announce the maintenance window to "
        "customers by "
        "Wednesday?\n\nAlex\n\n"
        f"On Mon, Mar 4, 2024 at 10:03 AM Łukasz Wiśniewski <lukasz.wisniewski@baltic-labs.pl> wrote:\n"
        f"{quote(t2)}\n"
    )
    box.add(
        frm=ME,
        to=f"{TOM}, {LUKASZ}",
        cc=PRIYA,
        subject="Re: " + subject,
        date="Mon, 4 Mar 2024 11:20:02 +0100",
        message_id=ids[2],
        in_reply_to=ids[1],
        references=ids[:2],
        body=alternative(t3, "000000000000a1b2c3d4e5f6"),
        labels=("Sent",),
        thread=None,
        received=False,
    )
    t4 = (
        "Will do: a status page post and an email to enterprise customers on Wednesday morning.\n\nPriya\n\n"
        f"On Mon, Mar 4, 2024 at 11:20 AM Alex Morgan <{ACCOUNT}> wrote:\n{quote(t3)}\n"
    )
    box.add(
        frm=PRIYA,
        to=ME,
        cc=f"{TOM}, {LUKASZ}",
        subject="Re: " + subject,
        date="Mon, 4 Mar 2024 14:41:10 +0100",
        message_id=ids[3],
        in_reply_to=ids[2],
        references=ids[:3],
        body=alternative(t4, "000000000000b2c3d4e5f6a7"),
        labels=("Inbox", "Opened"),
        thread=None,
    )
    t5 = (
        "Reminder: the migration starts tomorrow at 22:00 CET. Runbook:\n"
        "https://wiki.northwind.io/runbooks/orders-pg16\n\nFrom now on please use #orders-migration "
        "for updates.\n\n"
        "Tom\n"
    )
    box.add(
        frm=TOM,
        to=ME,
        cc=f"{LUKASZ}, {PRIYA}",
        subject="Re: " + subject,
        date="Fri, 15 Mar 2024 16:05:31 +0000",
        message_id=ids[4],
        in_reply_to=ids[3],
        references=ids[:4],
        body=text(t5),
        labels=("Inbox", "Opened"),
        thread=None,
    )
    t6 = (
        "Migration completed at 01:52. All checks are green, replication is stopped and the old cluster\n"
        "is read-only. The write pause was 11 minutes.\n\nŁukasz\n"
    )
    box.add(
        frm=LUKASZ,
        to=TOM,
        cc=f"{ME}, {PRIYA}",
        subject="Re: " + subject,
        date="Sun, 17 Mar 2024 02:14:33 +0100",
        message_id=ids[5],
        in_reply_to=ids[4],
        references=ids[:5],
        body=text(t6, cte="8bit"),
        labels=("Inbox", "Opened"),
        thread=None,
    )
    t7 = (
        f"Great work, thank you both! Let's do a short retro on Tuesday.\n\nAlex\n\n{SIG_ME}\n\n"
        f"On Sun, Mar 17, 2024 at 2:14 AM Łukasz Wiśniewski <lukasz.wisniewski@baltic-labs.pl> wrote:\n"
        f"{quote(t6)}\n"
    )
    box.add(
        frm=ME,
        to=f"{TOM}, {LUKASZ}",
        cc=PRIYA,
        subject="Re: " + subject,
        date="Sun, 17 Mar 2024 09:30:12 +0100",
        message_id=ids[6],
        in_reply_to=ids[5],
        references=ids[:6],
        body=alternative(t7, "000000000000c3d4e5f6a7b8"),
        labels=("Sent",),
        thread=None,
        received=False,
    )


def _invoice_thread_fr(box: Mailbox) -> None:
    ids = [
        "000a01da745b$3c2f1e40$b48d5ac0$@soleil-conseil.fr",
        "CAF2mR8vLk2Jh7Gf4Ds1Aq9Wz3Xc6Vb0@mail.gmail.com",
        "000b01da7482$9e8d7c60$db8a7520$@soleil-conseil.fr",
    ]
    t1 = (
        "Bonjour Alex,\n\nVeuillez trouver ci-joint la facture F-2024-031 pour les prestations de mars 2024\n"
        "(12 jours de conseil), d'un montant de 9 600,00 EUR HT.\n\nLe règlement est attendu sous 30 jours. "
        "N'hésitez pas à me contacter pour toute question.\n\nBien cordialement,\nMarie Lefèvre\n"
        "Soleil Conseil - 12 rue des Arts, 69002 Lyon\n"
    )
    body = multipart(
        "mixed",
        "----=_NextPart_000_000A_01DA745B.3C2F1E40",
        [
            text(t1, charset="iso-8859-1", cte="quoted-printable"),
            attachment("F-2024-031.pdf", "application/pdf", fake_pdf("Facture F-2024-031")),
        ],
    )
    box.add(
        frm=MARIE,
        to=ME,
        subject="Facture F-2024-031 - mars 2024 (invoice for March)",
        date="Tue, 12 Mar 2024 10:02:18 +0100",
        message_id=ids[0],
        body=body,
        labels=("Inbox", "Opened", "Finance/Invoices"),
        thread="invoice-fr",
        extra=(("X-Mailer", "Microsoft Outlook 16.0"),),
    )
    t2 = (
        "Hi Marie,\n\nThanks for the invoice for March. One thing: our purchase order number PO-7731 is\n"
        "missing. Could you add it and send the invoice again?\n\nBest,\nAlex\n\n"
        f"On Tue, Mar 12, 2024 at 10:02 AM Marie Lefèvre <marie.lefevre@soleil-conseil.fr> "
        f"wrote:\n{quote(t1)}\n"
    )
    box.add(
        frm=ME,
        to=MARIE,
        subject="Re: Facture F-2024-031 - mars 2024 (invoice for March)",
        date="Tue, 12 Mar 2024 15:47:03 +0100",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=alternative(t2, "000000000000d4e5f6a7b8c9"),
        labels=("Sent", "Finance/Invoices"),
        thread="invoice-fr",
        received=False,
    )
    t3 = (
        "Bonjour Alex,\n\nVoici la facture corrigée, avec le numéro de commande "
        "PO-7731.\n\nCordialement,\nMarie\n\n"
        f"Le mar. 12 mars 2024 à 15:47, Alex Morgan <{ACCOUNT}> a écrit :\n{quote(t2)}\n"
    )
    body = multipart(
        "mixed",
        "----=_NextPart_000_000B_01DA7482.9E8D7C60",
        [
            text(t3, charset="iso-8859-1", cte="8bit"),
            attachment("F-2024-031-v2.pdf", "application/pdf", fake_pdf("Facture F-2024-031 v2")),
        ],
    )
    box.add(
        frm=MARIE,
        to=ME,
        subject="RE: Facture F-2024-031 - mars 2024 (invoice for March)",
        date="Wed, 13 Mar 2024 09:11:45 +0100",
        message_id=ids[2],
        in_reply_to=ids[1],
        references=ids[:2],
        body=body,
        labels=("Inbox", "Opened", "Finance/Invoices"),
        thread="invoice-fr",
        extra=(("X-Mailer", "Microsoft Outlook 16.0"),),
    )


def _workshop_thread_de(box: Mailbox) -> None:
    ids = [
        "CAF2mR8uTr4Ew2Qa9Zs6Xd1Cf3Vg5Bh8@mail.gmail.com",
        "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d@nordlicht-systems.de",
        "CAF2mR8tYu6Io8Pa1Sd3Fg5Hj7Kl9Zx2@mail.gmail.com",
    ]
    subject = "Architecture workshop in Berlin in April"
    t1 = (
        "Hi Jürgen,\n\nWould the week of 15 April work for the architecture workshop in Berlin? We would be\n"
        "three people from our side.\n\nBest,\nAlex\n"
    )
    box.add(
        frm=ME,
        to=JURGEN,
        subject=subject,
        date="Wed, 6 Mar 2024 09:15:27 +0100",
        message_id=ids[0],
        body=alternative(t1, "000000000000e5f6a7b8c9d0"),
        labels=("Sent",),
        thread="berlin",
        received=False,
    )
    t2 = (
        "Hallo Alex,\n\ndanke für die Nachricht. Die Woche ab dem 15. April passt gut. Wir können "
        "den Workshop\n"
        "am Dienstag und Mittwoch in unserem Büro in Berlin-Mitte machen; für Mittagessen ist gesorgt.\n\n"
        "Viele Grüße\nJürgen\n\n-- \nJürgen Müller\nGeschäftsführer, Nordlicht Systems GmbH\n\n"
        f"Am Mi., 6. März 2024 um 09:15 Uhr schrieb Alex Morgan <{ACCOUNT}>:\n{quote(t1)}\n"
    )
    box.add(
        frm=JURGEN,
        to=ME,
        subject="AW: " + subject,
        date="Wed, 6 Mar 2024 13:48:09 +0100",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=text(t2, charset="iso-8859-1", cte="quoted-printable"),
        labels=("Inbox", "Opened", "Travel"),
        thread="berlin",
    )
    t3 = (
        "Perfect, Tuesday and Wednesday it is. I'll send the calendar invite today.\n\nAlex\n\n"
        f"On Wed, Mar 6, 2024 at 1:48 PM Jürgen Müller <j.mueller@nordlicht-systems.de> wrote:\n{quote(t2)}\n"
    )
    box.add(
        frm=ME,
        to=JURGEN,
        subject="Re: AW: " + subject,
        date="Wed, 6 Mar 2024 14:02:51 +0100",
        message_id=ids[2],
        in_reply_to=ids[1],
        references=ids[:2],
        body=alternative(t3, "000000000000f6a7b8c9d0e1"),
        labels=("Sent", "Travel"),
        thread="berlin",
        received=False,
    )


def _contract_thread_es(box: Mailbox) -> None:
    ids = [
        "CAF2mR8sQw3Er5Ty7Ui9Op1As3Df5Gh7@mail.gmail.com",
        "DB9PR02MB7382A1B2C3D4E5F6A7B8C9D0E1F2@DB9PR02MB7382.eurprd02.prod.outlook.com",
    ]
    subject = "Transport contract renewal 2024-2025"
    t1 = (
        "Hi José,\n\nCould you send us the renewal proposal for the transport contract before our budget\n"
        "meeting next week?\n\nThanks,\nAlex\n"
    )
    box.add(
        frm=ME,
        to=JOSE,
        subject=subject,
        date="Thu, 7 Mar 2024 16:20:40 +0100",
        message_id=ids[0],
        body=alternative(t1, "000000000000a7b8c9d0e1f2"),
        labels=("Sent",),
        thread="es",
        received=False,
    )
    t2 = (
        "Hola Alex:\n\nTe envío la propuesta de renovación del contrato de transporte para "
        "2024-2025. Las tarifas\n"
        "suben un 4 % por el coste del combustible; el resto de las condiciones no cambia.\n\n"
        "¿Podrías revisarla antes del viernes?\n\nUn saludo,\nJosé García\nAndes Logística\n\n"
        f"El jue, 7 mar 2024 a las 16:20, Alex Morgan (<{ACCOUNT}>) escribió:\n{quote(t1)}\n"
    )
    box.add(
        frm=JOSE,
        to=ME,
        subject="RE: " + subject,
        date="Fri, 8 Mar 2024 08:55:02 +0100",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=text(t2, cte="base64"),
        labels=("Inbox", "Opened", "Legal"),
        thread="es",
    )


def _lisbon_thread(box: Mailbox) -> None:
    ids = [
        "CAF2mR8rWe2Rt4Yu6Io8Pa0Sd2Fg4Hj6@mail.gmail.com",
        "1709897412.4471.ines@sapo.pt",
        "CAJd0e-4Nq7Lm1Kb8Vc3Xz6Sa9Df2Gh5@mail.gmail.com",
        "CAF2mR8qEr1Ty3Ui5Op7As9Df1Gh3Jk5@mail.gmail.com",
    ]
    subject = "Flight to Lisbon on 22 April"
    t1 = (
        "Hi Inês, hi Jane,\n\nI booked the flight to Lisbon: TAP TP 1357, departing Monday 22 April "
        "at 07:05,\n"
        "landing 08:50. The hotel is Casa do Rio near Cais do Sodré, three nights.\n\nInês, would Tuesday "
        "morning work for the office visit?\n\nAlex\n"
    )
    box.add(
        frm=ME,
        to=f"{INES}, {JANE_WORK}",
        cc=PRIYA,
        subject=subject,
        date="Fri, 8 Mar 2024 11:00:19 +0100",
        message_id=ids[0],
        body=alternative(t1, "000000000000b8c9d0e1f2a3"),
        labels=("Sent", "Travel"),
        thread="lisbon",
        received=False,
    )
    t2 = (
        "Olá Alex,\n\nTerça de manhã está ótimo. Podemos almoçar depois perto do escritório, "
        "conheço um sítio\n"
        "muito bom em Alfama.\n\nAbraços,\nInês\n\n"
        f"Em sex., 8 de mar. de 2024 às 11:00, Alex Morgan <{ACCOUNT}> escreveu:\n{quote(t1)}\n"
    )
    box.add(
        frm=INES,
        to=ME,
        cc=f"{JANE_WORK}, {PRIYA}",
        subject="Re: " + subject,
        date="Fri, 8 Mar 2024 12:37:44 +0000",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=text(t2, cte="8bit"),
        labels=("Inbox", "Opened", "Travel"),
        thread="lisbon",
    )
    t3 = (
        "Great, I'll join on Tuesday as well. Shall we share a taxi from the airport?\n\nJane\n\n"
        f"On Fri, 8 Mar 2024 at 12:37, Inês Costa <ines.costa@sapo.pt> wrote:\n{quote(t2)}\n"
    )
    box.add(
        frm=JANE,
        to=ME,
        cc=f"{INES}, {PRIYA}",
        subject="Re: " + subject,
        date="Fri, 8 Mar 2024 18:02:10 +0000",
        message_id=ids[2],
        in_reply_to=ids[1],
        references=ids[:2],
        body=alternative(t3, "000000000000c9d0e1f2a3b4"),
        labels=("Inbox", "Opened", "Travel"),
        thread="lisbon",
    )
    t4 = "Sure, let's meet at arrivals.\n\nAlex\n\n"
    t4 += "On Fri, Mar 8, 2024 at 7:02 PM Jane Doe <janedoe@gmail.com> wrote:\n"
    t4 += quote(t3) + "\n"
    box.add(
        frm=ME,
        to=JANE,
        subject="Re: " + subject,
        date="Fri, 8 Mar 2024 19:15:33 +0100",
        message_id=ids[3],
        in_reply_to=ids[2],
        references=ids[:3],
        body=alternative(t4, "000000000000d0e1f2a3b4c5"),
        labels=("Sent", "Travel"),
        thread="lisbon",
        received=False,
    )


def _receipts(box: Mailbox) -> None:
    plain = (
        "Booking confirmation\n\nBooking reference: QX7R2M\nPassenger: ALEX MORGAN\n\n"
        "TP 1357  Frankfurt (FRA) -> Lisbon (LIS)\nMonday, 22 April 2024, 07:05 - 08:50\n\n"
        "Fare: €268.00\nTaxes and fees: €44.40\nTotal paid: €312.40 (Visa ending 4242)\n\n"
        "This email is your receipt. Have a good flight to Lisbon!\n"
    )
    box.add(
        frm=addr("TAP Air Portugal", "noreply@flytap.com"),
        to=ACCOUNT,
        subject="Booking confirmation: your flight to Lisbon (TP 1357)",
        date="Fri, 8 Mar 2024 10:41:07 +0000",
        message_id="20240308104107.8f3a2c1d9e7b@flytap.com",
        body=alternative(plain, "=_tap_5d1c7e9f"),
        labels=("Inbox", "Opened", "Category Updates", "Travel"),
        thread="tap",
    )
    html = (
        '<html><body style="font-family:Helvetica,Arial"><table width="100%"><tr><td>'
        '<h1 style="font-size:22px">Thanks for riding, Alex</h1>'
        "<p>We hope you enjoyed your ride this evening.</p>"
        "<table><tr><td>Trip fare</td><td>€16.10</td></tr><tr><td>Booking fee</td><td>€2.50</td></tr>"
        "<tr><td><b>Total</b></td><td><b>€18.60</b></td></tr></table>"
        "<p>Cais do Sodré, Lisbon &rarr; Alfama, Lisbon</p>"
        '<p style="color:#888;font-size:11px">Uber B.V., Burgerweeshuispad 301, Amsterdam</p>'
        "</td></tr></table></body></html>\n"
    )
    box.add(
        frm=addr("Uber Receipts", "noreply@uber.com"),
        to=ACCOUNT,
        subject="Your Tuesday evening trip with Uber",
        date="Tue, 23 Apr 2024 19:48:22 +0000",
        message_id="8c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f@uber.com",
        body=text(html, subtype="html", cte="quoted-printable"),
        labels=("Archived", "Opened", "Category Updates", "Receipts"),
        thread="uber",
    )
    t = (
        "Hello Alex,\n\nPlease find attached invoice INV-0342 for bookkeeping services in March 2024.\n\n"
        "Total due: £1,250.00, payable by 15 April 2024.\n\nKind regards,\nBob Hughes\nCedar Accounting Ltd\n"
    )
    body = multipart(
        "mixed",
        "Apple-Mail=_4F2A7C1E-8B3D-4E6F-9A0B-1C2D3E4F5A6B",
        [
            text(t, cte="quoted-printable"),
            attachment("INV-0342.pdf", "application/pdf", fake_pdf("Invoice INV-0342")),
        ],
    )
    box.add(
        frm=BOB,
        to=ME,
        subject="Invoice INV-0342 for March bookkeeping",
        date="Mon, 1 Apr 2024 08:30:00 +0100",
        message_id="4F2A7C1E-8B3D-4E6F-9A0B-1C2D3E4F5A6B@cedar-accounting.co.uk",
        body=body,
        labels=("Inbox", "Opened", "Finance/Invoices"),
        thread="bob",
        extra=(("X-Mailer", "Apple Mail (2.3774.500.171.1.1)"),),
    )


def _forward(box: Mailbox) -> None:
    t = (
        "Alex, can you take this one? The customer is on the enterprise plan.\n\nPriya\n\n"
        "---------- Forwarded message ---------\nFrom: Kevin Walker <kevin.walker@globex-health.com>\n"
        "Date: Tue, Mar 19, 2024 at 4:51 PM\nSubject: Refund request for order 88412\n"
        "To: <support@example.com>\n\n\nHello,\n\nWe were charged twice for the annual plan (order 88412). "
        "Please refund the\nduplicate charge of $4,800.00 to the card on file.\n\nRegards,\nKevin Walker\n"
        "IT Director, Globex Health\n"
    )
    box.add(
        frm=PRIYA,
        to=ME,
        subject="Fwd: Refund request for order 88412",
        date="Tue, 19 Mar 2024 17:05:44 +0100",
        message_id="CAH7dW1rTy2Ui4Op6As8Df0Gh2Jk4Lz6@mail.gmail.com",
        references=["BN8PR12MB3347C0FFEE1234567890ABCDEF12@BN8PR12MB3347.namprd12.prod.outlook.com"],
        in_reply_to="BN8PR12MB3347C0FFEE1234567890ABCDEF12@BN8PR12MB3347.namprd12.prod.outlook.com",
        body=alternative(t, "000000000000e1f2a3b4c5d6"),
        labels=("Inbox", "Important", "Opened", "Support"),
        thread="fwd",
    )


def _newsletters(box: Mailbox) -> None:
    plain = (
        "Postgres Weekly - Issue 548\n\n* Zero-downtime database migrations with logical replication\n"
        "  How one team moved a 2 TB database to PostgreSQL 16 with an 11-minute write pause.\n"
        "  https://postgresweekly.com/link/154321/web\n\n* Tuning autovacuum for large tables\n"
        "  https://postgresweekly.com/link/154322/web\n\n* pgvector 0.7: faster HNSW builds\n"
        "  https://postgresweekly.com/link/154323/web\n\n"
        "Unsubscribe: https://postgresweekly.com/leave/8f3a2c1d\n"
    )
    html = (
        '<!DOCTYPE html><html><body style="background:#f4f4f4"><table width="600" align="center">'
        "<tr><td><h1>Postgres Weekly #548</h1></td></tr>"
        '<tr><td><h2><a href="https://postgresweekly.com/link/154321/web">Zero-downtime database migrations '
        "with logical replication</a></h2><p>How one team moved a 2&nbsp;TB database to PostgreSQL "
        "16 with an "
        "11-minute write pause.</p></td></tr>"
        '<tr><td><h2><a href="https://postgresweekly.com/link/154322/web">Tuning autovacuum for large tables'
        "</a></h2></td></tr>"
        '<tr><td><h2><a href="https://postgresweekly.com/link/154323/web">pgvector 0.7: faster HNSW builds'
        "</a></h2></td></tr>"
        '<tr><td style="font-size:11px"><a href="https://postgresweekly.com/leave/8f3a2c1d">Unsubscribe</a>'
        "</td></tr></table></body></html>\n"
    )
    body = multipart(
        "alternative", "b1_9e3c2a7d5f", [text(plain, cte="7bit"), text(html, subtype="html", cte="7bit")]
    )
    bulk = (
        ("List-Id", "Postgres Weekly <postgresweekly.list-id.cooperpress.com>"),
        (
            "List-Unsubscribe",
            "<https://postgresweekly.com/leave/8f3a2c1d>, <mailto:leave-8f3a2c1d@cooperpress.com>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("Precedence", "bulk"),
    )
    box.add(
        frm=addr("Postgres Weekly", "peter@postgresweekly.com"),
        to=ACCOUNT,
        subject="Zero-downtime database migrations, autovacuum tuning, pgvector 0.7",
        date="Thu, 14 Mar 2024 15:30:00 +0000",
        message_id="0100018e3d5f7a9b-1c2d3e4f-5a6b-000000@email.amazonses.com",
        body=body,
        labels=("Archived", "Opened", "Category Updates"),
        thread="pgweekly",
        extra=bulk,
    )
    html_fr = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"></head><body>'
        "<h1>Le Petit Journal Tech</h1><h2>Sécurité : les failles à corriger en priorité</h2>"
        "<p>Cette semaine, trois vulnérabilités critiques dans des bibliothèques très utilisées. "
        "Notre équipe a sélectionné les correctifs à appliquer dès maintenant.</p>"
        "<h2>Retour d'expérience : migrer vers PostgreSQL 16</h2>"
        "<p>Une équipe lyonnaise raconte sa migration, étape par étape.</p>"
        '<p style="font-size:11px"><a href="https://petitjournaltech.fr/desabonnement?u=77f1">'
        "Se désabonner</a></p></body></html>\n"
    )
    box.add(
        frm=addr("Le Petit Journal Tech", "lettre@petitjournaltech.fr"),
        to=ACCOUNT,
        subject="Les failles à corriger en priorité",
        subject_charset="iso-8859-1",
        date="Mon, 18 Mar 2024 07:00:00 +0100",
        message_id="lettre-2024-11.77f1@petitjournaltech.fr",
        body=text(html_fr, subtype="html", charset="iso-8859-1", cte="quoted-printable"),
        labels=("Inbox", "Unread", "Category Promotions"),
        thread="pjt",
        extra=(
            ("List-Id", "<lettre.petitjournaltech.fr>"),
            ("List-Unsubscribe", "<https://petitjournaltech.fr/desabonnement?u=77f1>"),
            ("Precedence", "bulk"),
        ),
    )


def _bounce(box: Mailbox) -> None:
    sent_id = "CAF2mR8pRt5Yu7Io9Pa1Sd3Fg5Hj7Kl9@mail.gmail.com"
    t = "Hi Jane,\n\nHere are the photos from Porto, as promised: https://photos.app.goo.gl/xY7zQ2\n\nAlex\n"
    sent = box.add(
        frm=ME,
        to=addr("Jane Doe", "jane.doe@gmial.com"),
        subject="Photos from Porto",
        date="Sat, 9 Mar 2024 20:14:05 +0100",
        message_id=sent_id,
        body=alternative(t, "000000000000f2a3b4c5d6e7"),
        labels=("Sent",),
        thread="bounce",
        received=False,
    )
    explanation = text(
        "\n** Address not found **\n\nYour message wasn't delivered to jane.doe@gmial.com because the domain "
        "gmial.com couldn't be found. Check for typos or unnecessary spaces and try again.\n\n"
        "The response was:\nDNS Error: DNS type 'mx' lookup of gmial.com responded with code NXDOMAIN\n"
    )
    status = Body(
        (("Content-Type", "message/delivery-status"),),
        b"Reporting-MTA: dns; googlemail.com\nReceived-From-MTA: dns; me@example.com\n"
        b"Arrival-Date: Sat, 09 Mar 2024 11:14:05 -0800 (PST)\n\n"
        b"Final-Recipient: rfc822; jane.doe@gmial.com\nAction: failed\nStatus: 5.1.2\n"
        b"Diagnostic-Code: smtp; DNS Error: DNS type 'mx' lookup of gmial.com responded with code NXDOMAIN\n"
        b"Last-Attempt-Date: Sat, 09 Mar 2024 11:14:06 -0800 (PST)\n",
    )
    original = Body((("Content-Type", "message/rfc822"),), sent)
    body = multipart(
        "report",
        "00000000000007e8c1061337a1b2",
        [explanation, status, original],
        params="; report-type=delivery-status",
    )
    box.add(
        frm=addr("Mail Delivery Subsystem", "mailer-daemon@googlemail.com"),
        to=ACCOUNT,
        subject="Delivery Status Notification (Failure)",
        date="Sat, 09 Mar 2024 11:14:06 -0800 (PST)",
        message_id="65ecb3de.050a0220.b2c1.0d41.GMR@mx.google.com",
        in_reply_to=sent_id,
        references=[sent_id],
        body=body,
        labels=("Inbox", "Opened"),
        thread="bounce",
        extra=(("X-Failed-Recipients", "jane.doe@gmial.com"), ("Auto-Submitted", "auto-replied")),
    )


def _legacy_charsets(box: Mailbox) -> None:
    olga_id = "1710315612.482913507@f512.i.mail.ru"
    t1 = (
        "Привет, Алекс!\n\nСпасибо за презентацию на прошлой неделе. Отправляю ссылку на отчёт по "
        "проекту Atlas:\n"
        "https://disk.example.ru/atlas-report-q1\n\nС уважением,\nОльга\n"
    )
    box.add(
        frm=OLGA,
        to=ME,
        subject="Отчёт по проекту Atlas",
        subject_charset="koi8-r",
        date="Wed, 13 Mar 2024 10:40:12 +0300",
        message_id=olga_id,
        body=text(t1, charset="koi8-r", cte="8bit"),
        labels=("Inbox", "Opened"),
        thread="olga",
    )
    t2 = (
        "Thank you Olga, the Atlas report looks great. I'll share it with the team.\n\nAlex\n\n"
        f"On Wed, Mar 13, 2024 at 8:40 AM Ольга Иванова <olga.ivanova@mail.ru> wrote:\n{quote(t1)}\n"
    )
    box.add(
        frm=ME,
        to=OLGA,
        subject="Re: Отчёт по проекту Atlas",
        date="Wed, 13 Mar 2024 09:02:47 +0100",
        message_id="CAF2mR8oTy6Ui8Op0As2Df4Gh6Jk8Lz0@mail.gmail.com",
        in_reply_to=olga_id,
        references=[olga_id],
        body=alternative(t2, "000000000000a3b4c5d6e7f8"),
        labels=("Sent",),
        thread="olga",
        received=False,
    )
    t3 = (
        "Alex様\n\nいつもお世話になっております。\nロボットアームの見積もりを添付いたします。\n"
        "来週の水曜日までにご確認いただけますでしょうか。\n\nよろしくお願いいたします。\n\n田中 太郎\n"
        "さくらロボティクス株式会社\n"
    )
    body = multipart(
        "mixed",
        "--_sakura_boundary_0314",
        [
            text(t3, charset="shift_jis", cte="base64"),
            attachment("quotation-2024-031.pdf", "application/pdf", fake_pdf("Quotation 2024-031")),
        ],
    )
    box.add(
        frm=TANAKA,
        to=ME,
        subject="ロボットアームのお見積もり (quotation)",
        subject_charset="shift_jis",
        date="Thu, 14 Mar 2024 17:20:05 +0900",
        message_id="20240314172005.5A3C.TANAKA@sakura-robotics.co.jp",
        body=body,
        labels=("Inbox", "Opened"),
        thread="tanaka",
    )
    francois_id = "PAXPR04MB8459E1F2A3B4C5D6E7F8A9B0C1D2@PAXPR04MB8459.eurprd04.prod.outlook.com"
    t4 = (
        "Bonjour Alex,\n\nJe vous confirme notre rendez-vous de jeudi à 14h. L’ordre du jour : budget 2024,\n"
        "recrutement et le projet Atlas. Le budget prévu pour la phase 2 est de 25 000 €.\n\n"
        "Cordialement,\nFrançois Dubois\nDirecteur technique, Lumina\n"
    )
    box.add(
        frm=FRANCOIS,
        to=ME,
        subject="Réunion de jeudi – ordre du jour",
        subject_charset="windows-1252",
        date="Mon, 18 Mar 2024 11:26:37 +0000",
        message_id=francois_id,
        body=alternative(t4, "_000_PAXPR04MB8459E1F2A3B4C5D6E7F8A9B0C1D2_", charset="windows-1252"),
        labels=("Inbox", "Opened"),
        thread="francois",
        extra=(
            ("Thread-Topic", encode_header_text("Réunion de jeudi – ordre du jour", "windows-1252", True)),
            ("Content-Language", "fr-FR"),
        ),
    )
    t5 = (
        "Merci François, see you on Thursday at 14:00.\n\nAlex\n\n"
        f"On Mon, Mar 18, 2024 at 12:26 PM François Dubois <francois.dubois@lumina.fr> wrote:\n{quote(t4)}\n"
    )
    box.add(
        frm=ME,
        to=FRANCOIS,
        subject="Re: Réunion de jeudi – ordre du jour",
        date="Mon, 18 Mar 2024 12:40:09 +0100",
        message_id="CAF2mR8nUi7Op9As1Df3Gh5Jk7Lz9Xc1@mail.gmail.com",
        in_reply_to=francois_id,
        references=[francois_id],
        body=alternative(t5, "000000000000b4c5d6e7f8a9"),
        labels=("Sent",),
        thread="francois",
        received=False,
    )


def _odd_messages(box: Mailbox) -> None:
    # A scanner talking straight SMTP: no Message-ID at all.
    body = multipart(
        "mixed",
        "=_scan_0305_1142",
        [
            text("Scanned from RICOH MP C3004, 3 pages.\n"),
            attachment("scan_20240305_114210.pdf", "application/pdf", fake_pdf("Scan 2024-03-05")),
        ],
    )
    box.add(
        frm=addr("RICOH MP C3004", "scanner@example.com"),
        to=ACCOUNT,
        subject="Scanned document",
        date="Tue, 5 Mar 2024 11:42:10 +0100",
        body=body,
        labels=("Inbox", "Opened"),
        thread="scan",
    )
    # A list message whose To is an empty group with a comment: CPython's header registry raises on it.
    cfp = (
        "Dear PostgreSQL community,\n\nThe call for papers for PGConf.EU 2024 in Athens closes on 31 May.\n"
        "We welcome talks on operations, database migrations, performance and extensions.\n\n"
        "Submit at https://2024.pgconf.eu/callforpapers/\n\nThe PGConf Europe organizing committee\n"
    )
    box.add(
        frm=addr("PGConf Europe", "contact@pgconf.eu"),
        to="unlisted-recipients:; (no To-header on input)",
        subject="PGConf.EU 2024: call for papers closes 31 May",
        date="Wed, 20 Mar 2024 12:00:00 +0100",
        message_id="171093600012.3021.9912345678901234567@pgconf.eu",
        body=text(cfp),
        labels=("Inbox", "Unread", "Category Forums"),
        thread="cfp",
        extra=(("List-Id", "PGConf Europe announcements <announce.lists.pgconf.eu>"), ("Precedence", "list")),
    )


def _notifications(box: Mailbox) -> None:
    root = "northwind/infra/pull/412@github.com"
    gh = (
        ("List-ID", "northwind/infra <infra.northwind.github.com>"),
        ("List-Archive", "https://github.com/northwind/infra"),
        (
            "List-Unsubscribe",
            "<mailto:unsub+AB3CDEF4GHIJ@reply.github.com>, "
            "<https://github.com/notifications/unsubscribe/AB3CDEF4GHIJ>",
        ),
        ("X-GitHub-Reason", "review_requested"),
        ("Precedence", "list"),
        ("X-Auto-Response-Suppress", "All"),
    )
    t1 = (
        "Adds the migration plan for the orders table to PostgreSQL 16: logical replication slot,\n"
        "index rebuild script and the rollback steps.\n\nYou can view, comment on, or merge this "
        "pull request "
        "online at:\n\n  https://github.com/northwind/infra/pull/412\n\n-- \nReply to this email directly or "
        "view it on GitHub:\nhttps://github.com/northwind/infra/pull/412\n"
    )
    box.add(
        frm=addr("Tom Becker", "notifications@github.com"),
        to="northwind/infra <infra@noreply.github.com>",
        cc=f"{ME}, Review requested <review_requested@noreply.github.com>",
        subject="[northwind/infra] Add migration for orders table to PostgreSQL 16 (PR #412)",
        date="Tue, 5 Mar 2024 08:02:11 -0800",
        message_id=root,
        body=alternative(t1, "--==_mimepart_65e7412"),
        labels=("Inbox", "Opened", "Category Updates", "GitHub"),
        thread="gh",
        extra=gh,
    )
    t2 = (
        "@alexmorgan the index rebuild takes about 2 hours on the staging copy. I split it per table so\n"
        "we can resume if the window runs out.\n\n-- \nReply to this email directly or view it on GitHub:\n"
        "https://github.com/northwind/infra/pull/412#issuecomment-1979812345\n"
    )
    box.add(
        frm=addr("Łukasz Wiśniewski", "notifications@github.com"),
        to="northwind/infra <infra@noreply.github.com>",
        cc=f"{ME}, Mention <mention@noreply.github.com>",
        subject="Re: [northwind/infra] Add migration for orders table to PostgreSQL 16 (PR #412)",
        date="Tue, 5 Mar 2024 09:40:52 -0800",
        message_id="northwind/infra/pull/412/c1979812345@github.com",
        in_reply_to=root,
        references=[root],
        body=alternative(t2, "--==_mimepart_65e75834"),
        labels=("Inbox", "Opened", "Category Updates", "GitHub"),
        thread="gh",
        extra=gh,
    )
    alert = (
        "New sign-in to your account\n\nme@example.com\n\nWe noticed a new sign-in to your Google "
        "Account on a "
        "Mac device.\nIf this was you, you don't need to do anything. If not, we'll help you secure your "
        "account.\n\nCheck activity: https://accounts.google.com/AccountChooser?Email=me@example.com\n"
    )
    box.add(
        frm=addr("Google", "no-reply@accounts.google.com"),
        to=ACCOUNT,
        subject="Security alert",
        date="Mon, 22 Apr 2024 06:12:45 GMT",
        message_id="Qm9LdW1lbnQtMTcxMzc2NjM2NQ@notifications.google.com",
        body=alternative(alert, "000000000000c5d6e7f8a9b0"),
        labels=("Inbox", "Opened", "Category Updates"),
        thread="sec",
    )
    jira = (
        "Tom Becker created OPS-218:\n\nPause billing workers during the orders migration\n\n"
        "Priority: High\nAssignee: Alex Morgan\nDue: "
        "16/Mar/24\n\nhttps://northwind.atlassian.net/browse/OPS-218\n"
    )
    box.add(
        frm=addr("Tom Becker (Jira)", "jira@northwind.atlassian.net"),
        to=ACCOUNT,
        subject="[JIRA] (OPS-218) Pause billing workers during the orders migration",
        date="Mon, 4 Mar 2024 10:30:14 +0000",
        message_id="JIRA.10218.1709548214000.4412.1709548214052@Atlassian.JIRA",
        body=text(jira),
        labels=("Inbox", "Opened", "Category Updates"),
        thread="jira",
        extra=(("Auto-Submitted", "auto-generated"), ("Precedence", "bulk")),
    )


def _offsite_thread(box: Mailbox) -> None:
    ids = [
        "CAF2mR8mIo8As0Df2Gh4Jk6Lz8Xc0Vb2@mail.gmail.com",
        "CAGx5-Nt2Hs7Kd1Lf6Pq3Wr8Zm4Vc9Ab@mail.gmail.com",
        "CAM4kE-9Rt1Wq5Ep8Ty2Ui6Oa3Sd7Fg@mail.gmail.com",
    ]
    subject = "Team offsite on 25 April"
    t1 = (
        "Hi all,\n\nOur spring offsite is on Thursday 25 April at the Quinta da Regaleira in "
        "Sintra. The bus leaves\n"
        "the Lisbon office at 08:30. Agenda: roadmap review in the morning, hiking in the afternoon.\n\n"
        "Please fill in the dietary form by Friday.\n\nAlex\n"
    )
    box.add(
        frm=ME,
        to=f"{PRIYA}, {DANIEL}, {EMMA}",
        cc=SOFIA,
        subject=subject,
        date="Mon, 25 Mar 2024 10:05:00 +0100",
        message_id=ids[0],
        body=alternative(t1, "000000000000d6e7f8a9b0c1"),
        labels=("Sent",),
        thread="offsite",
        received=False,
    )
    t2 = (
        "Count me in! I'm vegetarian, already filled in the form.\n\nDaniel\n\n"
        f"On Mon, Mar 25, 2024 at 10:05 AM Alex Morgan <{ACCOUNT}> wrote:\n{quote(t1)}\n"
    )
    box.add(
        frm=DANIEL,
        to=ME,
        cc=f"{PRIYA}, {EMMA}, {SOFIA}",
        subject="Re: " + subject,
        date="Mon, 25 Mar 2024 10:31:18 +0100",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=alternative(t2, "000000000000e7f8a9b0c1d2"),
        labels=("Inbox", "Opened"),
        thread="offsite",
    )
    t3 = (
        "Same here, see you on the bus.\n\nEmma\n\n"
        f"On Mon, Mar 25, 2024 at 10:31 AM Daniel Reid <daniel.reid@example.com> wrote:\n{quote(t2)}\n"
    )
    box.add(
        frm=EMMA,
        to=ME,
        cc=f"{PRIYA}, {DANIEL}, {SOFIA}",
        subject="Re: " + subject,
        date="Mon, 25 Mar 2024 11:02:40 +0100",
        message_id=ids[2],
        in_reply_to=ids[1],
        references=ids[:2],
        body=alternative(t3, "000000000000f8a9b0c1d2e3"),
        labels=("Inbox", "Opened"),
        thread="offsite",
    )


def _jane_threads(box: Mailbox) -> None:
    ids = [
        "CAF2mR8lAs9Df1Gh3Jk5Lz7Xc9Vb1Nm3@mail.gmail.com",
        "CAJd0e-7Wq2Er4Ty6Ui8Op0As2Df4Gh@mail.gmail.com",
    ]
    subject = "Design contract for Q2"
    t1 = (
        "Hi Jane,\n\nAttached is the contract for the Q2 design work: 10 days, EUR 6,000, starting 2 April.\n"
        "Could you sign it and send it back?\n\nThanks,\nAlex\n"
    )
    body = multipart(
        "mixed",
        "000000000000a9b0c1d2e3f4",
        [
            alternative(t1, "000000000000a9b0c1d2e3f5"),
            attachment("Design-contract-Q2-2024.pdf", "application/pdf", fake_pdf("Design contract Q2")),
        ],
    )
    box.add(
        frm=ME,
        to=JANE_WORK,
        subject=subject,
        date="Wed, 27 Mar 2024 14:20:00 +0100",
        message_id=ids[0],
        body=body,
        labels=("Sent", "Legal"),
        thread="contract",
        received=False,
    )
    t2 = (
        "Signed copy attached! I'll send an invoice at the end of each month.\n\nJane\n\n"
        f"On Wed, Mar 27, 2024 at 2:20 PM Alex Morgan <{ACCOUNT}> wrote:\n{quote(t1)}\n"
    )
    body = multipart(
        "mixed",
        "000000000000b0c1d2e3f4a5",
        [
            alternative(t2, "000000000000b0c1d2e3f4a6"),
            attachment("Design-contract-Q2-2024-signed.pdf", "application/pdf", fake_pdf("Signed")),
        ],
    )
    signed = box.add(
        frm=JANE,
        to=ME,
        subject="Re: " + subject,
        date="Thu, 28 Mar 2024 09:45:12 +0000",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=body,
        labels=("Inbox", "Opened", "Legal"),
        thread="contract",
    )
    box.repeat(signed)  # the exact duplicate
    dinner = [
        "CAJd0e-2Zx4Cv6Bn8Mq0Wq2Er4Ty6Ui8@mail.gmail.com",
        "CAF2mR8kDf2Gh4Jk6Lz8Xc0Vb2Nm4Qw6@mail.gmail.com",
    ]
    t3 = (
        "Are you free for dinner on Saturday? There's a new Portuguese place near the river,\n"
        "Tasca do Zé. 19:30?\n\nJane\n"
    )
    box.add(
        frm=JANE,
        to=ME,
        subject="Dinner on Saturday?",
        date="Wed, 10 Apr 2024 18:22:04 +0000",
        message_id=dinner[0],
        body=text(t3, cte="8bit"),
        labels=("Inbox", "Opened", "Category Personal"),
        thread="dinner",
    )
    t4 = "Yes! 19:30 works, see you there.\n\n"
    t4 += "On Wed, Apr 10, 2024 at 8:22 PM Jane Doe <janedoe@gmail.com> wrote:\n"
    t4 += quote(t3) + "\n"
    box.add(
        frm=ME,
        to=JANE,
        subject="Re: Dinner on Saturday?",
        date="Wed, 10 Apr 2024 20:40:51 +0200",
        message_id=dinner[1],
        in_reply_to=dinner[0],
        references=dinner[:1],
        body=alternative(t4, "000000000000c1d2e3f4a5b6"),
        labels=("Sent",),
        thread="dinner",
        received=False,
    )


def _questions(box: Mailbox) -> None:
    """Mail that asks the account something directly and has no answer yet (needs-reply)."""
    t = (
        "Hi Alex,\n\nThanks again for the talk on Tuesday, the team loved the part about semantic search.\n\n"
        "Could you send me the slides by Friday? I'd like to share them with our engineering leads.\n\n"
        "Thanks,\nZoë\n\n-- \nZoë Clarke\nVP Engineering, Bluefin\n"
    )
    box.add(
        frm=ZOE,
        to=ME,
        subject="Slides from Tuesday's talk",
        date="Wed, 17 Apr 2024 16:12:33 +0100",
        message_id="B3F1C2D4-5E6A-4B7C-8D9E-0F1A2B3C4D5E@bluefin.io",
        body=alternative(t, "Apple-Mail=_B3F1C2D4"),
        labels=("Inbox", "Important", "Unread"),
        thread="zoe",
        extra=(("X-Mailer", "iPhone Mail (21E236)"),),
    )
    ids = [
        "CAPk9r-3Lm5Nb7Vc9Xz1As3Df5Gh7Jk@mail.gmail.com",
        "CAF2mR8jGh3Jk5Lz7Xc9Vb1Nm3Qw5Er7@mail.gmail.com",
    ]
    t1 = (
        "Hi Alex,\n\nI'd like to introduce Ana Oliveira for the Senior Backend Engineer role. She has eight\n"
        "years of Go and PostgreSQL experience, most recently leading a database migration at a fintech.\n\n"
        "Are you available to interview her on Thursday at 15:00?\n\nBest,\nSam Chen\nKestrel Talent\n"
    )
    box.add(
        frm=SAM,
        to=ME,
        subject="Candidate for Senior Backend Engineer: Ana Oliveira",
        date="Mon, 15 Apr 2024 09:05:27 +0100",
        message_id=ids[0],
        body=alternative(t1, "000000000000d2e3f4a5b6c7"),
        labels=("Inbox", "Opened", "Hiring"),
        thread="hiring",
    )
    t2 = (
        "Yes, Thursday at 15:00 works. Please send the calendar invite.\n\nAlex\n\n"
        f"On Mon, Apr 15, 2024 at 10:05 AM Sam Chen <sam.chen@kestrel-talent.com> wrote:\n{quote(t1)}\n"
    )
    box.add(
        frm=ME,
        to=SAM,
        subject="Re: Candidate for Senior Backend Engineer: Ana Oliveira",
        date="Mon, 15 Apr 2024 11:30:00 +0200",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=alternative(t2, "000000000000e3f4a5b6c7d8"),
        labels=("Sent", "Hiring"),
        thread="hiring",
        received=False,
    )


def _italian_thread(box: Mailbox) -> None:
    ids = ["CAF2mR8iJk4Lz6Xc8Vb0Nm2Qw4Er6Ty8@mail.gmail.com", "a1b2c3d4e5f6.giulia.rossi@libero.it"]
    subject = "Talk at PyCon Italia"
    t1 = (
        "Hi Giulia,\n\nI'd be happy to give a talk on semantic search over email in Florence.\n"
        "Do you need an abstract by a specific date?\n\nAlex\n"
    )
    box.add(
        frm=ME,
        to=GIULIA,
        subject=subject,
        date="Mon, 4 Mar 2024 09:30:00 +0100",
        message_id=ids[0],
        body=alternative(t1, "000000000000f4a5b6c7d8e9"),
        labels=("Sent", "Conferences"),
        thread="pycon",
        received=False,
    )
    quoted = "<br>\n".join(_esc(line) for line in t1.rstrip("\n").split("\n"))
    html = (
        "<html><body><div>Ciao Alex,</div><div><br></div><div>fantastico, grazie! L'abstract ci "
        "serve entro il "
        "15 aprile. Il talk dura 30 minuti più le domande; viaggio e due notti in albergo sono a carico "
        "nostro.</div><div><br></div><div>A presto,<br>Giulia</div><div><br></div>"
        f"<div>Il giorno lun 4 mar 2024 alle ore 09:30 Alex Morgan &lt;{ACCOUNT}&gt; ha scritto:</div>"
        f'<blockquote style="margin:0 0 0 .8ex;border-left:1px #ccc solid;padding-left:1ex">{quoted}'
        "</blockquote></body></html>\n"
    )
    box.add(
        frm=GIULIA,
        to=ME,
        subject="Re: " + subject,
        date="Mon, 4 Mar 2024 13:17:52 +0100",
        message_id=ids[1],
        in_reply_to=ids[0],
        references=ids[:1],
        body=text(html, subtype="html", cte="quoted-printable"),
        labels=("Inbox", "Opened", "Conferences"),
        thread="pycon",
        extra=(("X-Mailer", "Libero Mail"),),
    )


# ---------------------------------------------------------------------------------------------
# Writing and counting.


def _gmail_id(when: datetime, serial: int) -> int:
    return (int(when.timestamp() * 1000) << 20) | (serial * 2654435761 & 0xFFFFF)


def render(box: Mailbox) -> bytes:
    """The mbox bytes: Takeout postmarks and headers, mboxrd escaping, a blank line after each message."""
    thread_ids: dict[str, int] = {}
    ids_by_raw: dict[bytes, int] = {}
    out: list[bytes] = []
    for serial, msg in enumerate(box.messages):
        gid = ids_by_raw.setdefault(msg.raw, _gmail_id(msg.date, serial))
        head = ""
        if msg.thread is not None:
            thread_ids.setdefault(msg.thread, gid)
            head = f"X-GM-THRID: {thread_ids[msg.thread]}\n"
        head += f"X-Gmail-Labels: {','.join(msg.labels)}\n"
        when = msg.date
        postmark = f"From {gid}@xxx {when:%a %b %d %H:%M:%S} +0000 {when.year}\n"
        out.append(postmark.encode("ascii") + mboxrd_escape(head.encode("ascii") + msg.raw) + b"\n")
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class SampleCounts:
    entries: int
    distinct_message_ids: int
    without_message_id: int
    duplicates: int
    threads_by_headers: int  # References/In-Reply-To only, X-GM-THRID ignored
    threads: int  # X-GM-THRID where present, else References/In-Reply-To (what the pipeline does)
    without_gm_thrid: int
    largest_thread_without_gm_thrid: int
    sent: int
    received: int


def count_mailbox(path: Path) -> SampleCounts:
    """Parse an mbox with the standard library and count what the README promises."""
    parser = BytesHeaderParser(policy=compat32)  # compat32: the broken To header must not stop the count
    rows = []
    for entry in mailbox.mbox(path):
        headers = parser.parsebytes(entry.as_bytes())
        mid = _IDS.findall(str(headers.get("Message-ID", "") or ""))
        links = _IDS.findall(str(headers.get("References", "") or "")) + _IDS.findall(
            str(headers.get("In-Reply-To", "") or "")
        )
        labels = [x.strip() for x in str(headers.get("X-Gmail-Labels", "") or "").split(",")]
        rows.append((mid[0] if mid else None, links, headers.get("X-GM-THRID"), "Sent" in labels))
    return _count(rows)


def _count(rows: list[tuple[str | None, list[str], str | None, bool]]) -> SampleCounts:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    nodes = []
    for i, (mid, links, _, _) in enumerate(rows):
        node = mid or f"#entry-{i}"
        nodes.append(node)
        for link in links:
            parent[find(link)] = find(node)
    roots = [find(n) for n in nodes]
    with_id = [mid for mid, _, _, _ in rows if mid]
    plain_roots = [r for r, row in zip(roots, rows, strict=True) if row[2] is None]
    sizes: dict[str, set[str]] = {}
    for root, node in zip(
        plain_roots, [n for n, row in zip(nodes, rows, strict=True) if row[2] is None], strict=True
    ):
        sizes.setdefault(root, set()).add(node)  # a set of nodes: duplicates count once
    return SampleCounts(
        entries=len(rows),
        distinct_message_ids=len(set(with_id)),
        without_message_id=len(rows) - len(with_id),
        duplicates=len(with_id) - len(set(with_id)),
        threads_by_headers=len(set(roots)),
        threads=len(
            {("g", row[2]) if row[2] else ("h", root) for root, row in zip(roots, rows, strict=True)}
        ),
        without_gm_thrid=len(plain_roots),
        largest_thread_without_gm_thrid=max(map(len, sizes.values()), default=0),
        sent=sum(1 for row in rows if row[3]),
        received=sum(1 for row in rows if not row[3]),
    )


_README = """# Bundled sample mailbox

`sample.mbox` is a small hand-written Gmail Takeout export for `mailpipe demo` and for tests. It is
built by `python -m bench.make_sample` (edit that script, never the file), and the numbers below are
computed by parsing the file back with Python's `mailbox` module.

Account: `me@example.com` (Alex Morgan). Received mail has `Delivered-To: me@example.com`; mail the
account sent has the `Sent` label. Dates fall between March and April 2024.

## What is in it

- **A 7-message thread without `X-GM-THRID`** ("Database migration: orders to PostgreSQL 16"): only
  `References`/`In-Reply-To` link it. The account writes to several people (To and Cc) in it.
  Every other thread has `X-GM-THRID`.
- **Replies quoting in six languages**: English ("On ... wrote:"), French ("Le ... a écrit :"),
  German ("Am ... schrieb ...:"), Spanish ("El ... escribió:"), Portuguese ("Em ... escreveu:") and
  Italian ("Il giorno ... ha scritto:", in an HTML-only message); an Outlook-style `RE:`/`AW:` subject.
- **A forward** ("---------- Forwarded message ---------") of a customer's refund request, whose
  `References` point at a message that is not in the mailbox.
- **Newsletters** with `List-Id`, `List-Unsubscribe` (one also `List-Unsubscribe-Post`) and
  `Precedence: bulk`: Postgres Weekly (multipart/alternative) and a French HTML-only one in iso-8859-1.
- **A bounce**: `multipart/report; report-type=delivery-status` from `mailer-daemon@googlemail.com`
  with a `message/delivery-status` part and the original as `message/rfc822`, for mail sent to
  `jane.doe@gmial.com`.
- **Non-UTF-8 charsets** with non-ASCII text: iso-8859-1 (French, German; quoted-printable and 8bit),
  windows-1252 (Outlook, with `’` and `€`), koi8-r (Russian, 8bit) and shift_jis (Japanese, base64),
  in bodies and in RFC 2047 encoded headers.
- **A message without Message-ID** (a scanner's "Scanned document") and **an exact duplicate** of an
  earlier message (Jane's signed contract, same bytes and Message-ID).
- **A broken header**: `To: unlisted-recipients:; (no To-header on input)` on a conference list mail.
- **Receipts**: a TAP flight booking (flight to Lisbon), an HTML-only Uber receipt, an accountant's
  invoice for March; **notifications** from `notifications@github.com` (a 2-message PR thread),
  `no-reply@accounts.google.com` and Jira (`Auto-Submitted: auto-generated`).
- **Multipart/alternative** (most mail from Gmail), **HTML-only** mail, **attachments** (small PDFs).
- **One gmail.com contact under two spellings**: the account writes to `jane.doe+work@gmail.com`,
  Jane writes from `janedoe@gmail.com` (the same mailbox once dots and `+tags` are folded).
- **A direct question to the account with no answer yet** ("Could you send me the slides by Friday?"
  from Zoë Clarke), so a needs-reply heuristic fires.
- Topics for search: "invoice for March", "flight to Lisbon", "database migration", hiring, an
  offsite, a workshop in Berlin, a transport contract, a conference talk.

## Expected counts

| count | value |
|---|---|
{rows}

`threads` groups by `X-GM-THRID` where present, else by `References`/`In-Reply-To` (as the pipeline
does); `threads by headers` ignores `X-GM-THRID`. A duplicate is an entry whose Message-ID appeared
earlier in the file.
"""

_LABELS = {
    "entries": "total entries",
    "distinct_message_ids": "distinct Message-IDs",
    "without_message_id": "messages without Message-ID",
    "duplicates": "duplicates (same Message-ID as an earlier entry)",
    "threads_by_headers": "threads by headers",
    "threads": "threads",
    "without_gm_thrid": "messages without X-GM-THRID",
    "largest_thread_without_gm_thrid": "largest thread without X-GM-THRID",
    "sent": "sent by the account (label Sent)",
    "received": "received",
}


def readme(counts: SampleCounts) -> str:
    rows = "\n".join(f"| {_LABELS[key]} | {value} |" for key, value in asdict(counts).items())
    return _README.replace("{rows}", rows)


def build_sample() -> bytes:
    return render(build_mailbox())


def write_sample(out_dir: Path = SAMPLES_DIR) -> SampleCounts:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = build_sample()
    path = out_dir / "sample.mbox"
    path.write_bytes(data)
    counts = count_mailbox(path)
    (out_dir / "README.md").write_text(readme(counts), encoding="utf-8")
    return counts


def counts_of(data: bytes) -> SampleCounts:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.mbox"
        path.write_bytes(data)
        return count_mailbox(path)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.make_sample", description="Write the sample mailbox."
    )
    parser.add_argument("--out-dir", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    counts = write_sample(args.out_dir)
    if args.json:
        print(json.dumps(asdict(counts)))
    else:
        print(f"wrote {args.out_dir / 'sample.mbox'} and README.md")
        for key, value in asdict(counts).items():
            print(f"  {_LABELS[key]}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
