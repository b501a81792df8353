"""Importing a mailbox file: whose it is, the run, the windows, and the summary at the end."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from pipeline.driver import Dispatch, DriveOptions, Driver, Tick
from pipeline.errors import BadInputError
from pipeline.runs import RunProgress, abandon_run, begin_run, ensure_account
from pipeline.settings import Settings
from pipeline.sources.mbox import MboxFile, iter_messages, open_mbox
from pipeline.storage.db import transaction
from pipeline.storage.models import Account, Contact, Thread

OWNER_SAMPLE = 500  # messages read to guess whose mailbox a file is
_HEADERS = BytesHeaderParser(policy=compat32)


@dataclass(frozen=True, slots=True)
class ImportSummary:
    run_id: int
    account: str
    status: str
    entries: int
    new_messages: int
    duplicates: int
    failed: int
    failed_windows: int  # window stages that failed for good
    enrichment_owed: int  # embed/insight stages an AI outage left owed: the enrichment sweep resumes them
    threads: int
    contacts: int
    chunks_embedded: int
    seconds: float
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def guess_owner(mbox: MboxFile) -> tuple[str | None, set[str]]:
    """The mailbox owner's address and own addresses, from Delivered-To and the From of sent mail."""
    delivered: Counter[str] = Counter()
    sent_from: Counter[str] = Counter()
    for raw in islice(iter_messages(mbox), OWNER_SAMPLE):
        headers = _HEADERS.parsebytes(raw.raw or b"")
        for _, addr in getaddresses([str(v) for v in headers.get_all("Delivered-To", [])]):
            if "@" in addr:
                delivered[addr.lower()] += 1
        labels = str(headers.get("X-Gmail-Labels", "") or "")
        if "Sent" in [part.strip().strip('"') for part in labels.split(",")]:
            for _, addr in getaddresses([str(headers.get("From", "") or "")]):
                if "@" in addr:
                    sent_from[addr.lower()] += 1
    own = set(delivered) | set(sent_from)
    owner = (delivered or sent_from).most_common(1)[0][0] if (delivered or sent_from) else None
    return owner, own


def import_mbox(
    engine: Engine,
    settings: Settings,
    path: Path,
    account: str | None,
    dispatch: Dispatch,
    *,
    on_tick: Tick | None = None,
    alive: Any = None,
) -> ImportSummary:
    """Import one mbox file end to end; returns when every window is finished (or the run failed)."""
    mbox = open_mbox(path)
    owner, own = guess_owner(mbox)
    email = (account or owner or "").strip().lower()
    if not email or "@" not in email:
        raise BadInputError(f"{path}: cannot tell whose mailbox this is; pass --account EMAIL")
    account_id = ensure_account(engine, email, own if account is None else {email})
    started = time.monotonic()
    run_id = begin_run(engine, account_id, "import", str(path.resolve()), settings.run_stale_seconds)
    options = DriveOptions(
        window_size=settings.window_size,
        windows_in_flight=settings.windows_in_flight,
        stall_seconds=settings.stage_time_limit + 60,
    )
    driver = Driver(engine, run_id, options, dispatch, on_tick=on_tick, alive=alive)
    try:
        driver.feed(iter_messages(mbox))
        progress = driver.wait()
    except BaseException:
        abandon_run(engine, run_id, "the import was interrupted")
        raise
    return summarize(engine, progress, email, time.monotonic() - started)


def summarize(engine: Engine, progress: RunProgress, email: str, seconds: float) -> ImportSummary:
    with transaction(engine) as s:
        account_id = s.execute(select(Account.id).where(Account.email == email)).scalar_one()
        threads = s.execute(
            select(func.count()).select_from(Thread).where(Thread.account_id == account_id,
                                                            Thread.message_count > 0)
        ).scalar_one()
        contacts = s.execute(
            select(func.count()).select_from(Contact).where(Contact.account_id == account_id)
        ).scalar_one()
    return ImportSummary(
        run_id=progress.run_id,
        account=email,
        status=progress.status,
        entries=progress.entries,
        new_messages=progress.new_messages,
        duplicates=progress.duplicates,
        failed=progress.failed_messages,
        failed_windows=sum(progress.stage_failed_windows.values()) - progress.enrichment_owed,
        enrichment_owed=progress.enrichment_owed,
        threads=int(threads),
        contacts=int(contacts),
        chunks_embedded=progress.chunks_embedded,
        seconds=round(seconds, 3),
        error=progress.error,
    )


__all__ = ["ImportSummary", "guess_owner", "import_mbox", "summarize"]
