"""The `mailpipe` command as a user runs it: the embedded default, bad input, --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _run(args: list[str], home: Path, timeout: float = 600,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env.update({"MAILPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1", "MAILPIPE_WORKER_CONCURRENCY": "2"})
    env.update(extra_env or {})
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
    # Gmail's breaker is listed before it is first used (a series to alert on), closed and clean.
    assert [(b["name"], b["state"], b["failures"]) for b in status["breakers"]] == [("gmail", "closed", 0)]


def test_worker_children_replaced_after_every_task_lose_nothing(tmp_path: Path, sample_mbox: Path) -> None:
    # Each task in a new child forked from a parent that is connected to the embedded broker: the
    # child must not publish the next stage on its parent's Postgres session (it did, and lost it).
    from tests.oracle import mbox_facts

    home = tmp_path / "home"
    result = _run(["import", str(sample_mbox), "--account", "me@example.com", "--json"], home,
                  extra_env={"MAILPIPE_WORKER_MAX_TASKS_PER_CHILD": "1", "MAILPIPE_WINDOW_SIZE": "5",
                             "MAILPIPE_WORKER_LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "done" and summary["failed"] == 0, summary
    assert summary["new_messages"] == mbox_facts(sample_mbox).messages
    log = (home / "logs" / "worker.log").read_text(errors="replace")
    assert "ForkPoolWorker-5" in log  # children really were replaced (INFO logs each task's child)
    assert "Traceback" not in log, log[-3000:]


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


def test_demo_gmail_syncs_the_sample_through_the_api_path(tmp_path: Path, sample_mbox: Path) -> None:
    """`demo --gmail`: a loopback Gmail server, the OAuth refresh, batch fetches, the worker pool."""
    from tests.oracle import mbox_facts

    home = tmp_path / "home"
    result = _run(["demo", "--gmail", "--json"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    sync = json.loads(result.stdout)["sync"]
    assert sync["mode"] == "full" and sync["status"] == "done"
    assert sync["new_messages"] == mbox_facts(sample_mbox).messages
    assert sync["quota_units"] > 0 and sync["failed"] == 0
    listed = _run(["accounts", "list", "--json"], home)
    # Once (under load, 2026-12-05) this printed nothing: its error is kept here to find out why.
    assert listed.returncode == 0, listed.stderr[-3000:]
    accounts = json.loads(listed.stdout)["accounts"]
    assert [(a["email"], a["kind"], a["connected"]) for a in accounts] == [("me@example.com", "gmail", True)]


def test_accounts_add_needs_a_secret_key(tmp_path: Path) -> None:
    grant = tmp_path / "grant.json"
    grant.write_text('{"refresh_token": "r", "client_id": "c", "client_secret": "s"}')
    result = _run(["accounts", "add", "me@example.com", "--grant-file", str(grant)], tmp_path / "home")
    assert result.returncode == 1
    assert "MAILPIPE_SECRET_KEY" in result.stderr


def test_sync_of_an_unknown_account_is_a_clear_error(embedded_home: Path) -> None:
    result = _run(["sync", "nobody@example.com"], embedded_home)
    assert result.returncode == 2
    assert "no account 'nobody@example.com'" in result.stderr
