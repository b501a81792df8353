"""An independent count of what an mbox holds, from the standard library only (the test oracle)."""

from __future__ import annotations

import hashlib
import mailbox
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MboxFacts:
    entries: int
    distinct_ids: int
    without_id: int  # distinct messages (by content) that have no Message-ID

    @property
    def messages(self) -> int:
        return self.distinct_ids + self.without_id


def mbox_facts(path: Path) -> MboxFacts:
    ids: set[str] = set()
    keyless: set[str] = set()
    entries = 0
    for msg in mailbox.mbox(str(path)):
        entries += 1
        mid = (msg.get("Message-ID") or "").strip().strip("<>").strip()
        if mid:
            ids.add(mid)
        else:
            keyless.add(hashlib.sha256(msg.as_bytes()).hexdigest())
    return MboxFacts(entries=entries, distinct_ids=len(ids), without_id=len(keyless))
