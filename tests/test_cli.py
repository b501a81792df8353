"""The `mailpipe` command as a user runs it: the embedded default, bad input, --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _run(args: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env.update({"MAILPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1", "MAILPIPE_WORKER_CONCURRENCY": "2"})
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded-home")


def test_missing_file_is_a_clear_error_and_writes_nothing(embedded_home: Path, tmp_path: Path) -> None:
    result = _run(["import", str(tmp_path / "nope.mbox")], embedded_home)
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    status = json.loads(_run(["status", "--json"], embedded_home).stdout)
    assert status["accounts"] == []


def test_non_mbox_file_is_rejected(embedded_home: Path, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("just some notes\nnot a mailbox\n")
    result = _run(["import", str(junk)], embedded_home)
    assert result.returncode == 2
    assert "not an mbox file" in result.stderr


def test_embedded_default_imports_and_answers(embedded_home: Path, sample_mbox: Path) -> None:
    """No broker, no database configured: the CLI starts Postgres and its own worker pool."""
    from tests.oracle import mbox_facts

    result = _run(["import", str(sample_mbox), "--account", "me@example.com", "--json"], embedded_home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    facts = mbox_facts(sample_mbox)
    assert summary["new_messages"] == facts.messages
    assert set(summary) >= {"run_id", "entries", "new_messages", "duplicates", "failed", "threads",
                            "contacts", "chunks_embedded", "seconds"}

    status = json.loads(_run(["status", "--json"], embedded_home).stdout)
    account = status["accounts"][0]
    assert account["email"] == "me@example.com"
    assert account["messages"] == facts.messages
    assert account["chunks"] > 0 and account["insights"] > 0

    contacts = json.loads(_run(["contacts", "--json", "--limit", "5"], embedded_home).stdout)["contacts"]
    assert contacts and {"email", "name", "sent", "received", "first_seen", "last_seen", "rank"} <= set(contacts[0])
    assert [c["rank"] for c in contacts] == sorted((c["rank"] for c in contacts), reverse=True)

    hits = json.loads(_run(["search", "invoice", "--json"], embedded_home).stdout)["hits"]
    assert hits and {"message_id", "thread_id", "subject", "from", "date", "score", "snippet"} <= set(hits[0])
