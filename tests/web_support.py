"""Helpers of the web API tests: `mailpipe serve` in a subprocess on a free loopback port, mail seeded
through the pipeline's own stages, the sync queue read back from Redis."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from sqlalchemy import Engine

from pipeline.records import RawMessage
from pipeline.runs import add_window, begin_run, end_reading, ensure_account
from pipeline.settings import Settings
from pipeline.stages.contacts import contacts_window
from pipeline.stages.ingest import ingest_window
from pipeline.stages.insight import insight_window
from pipeline.stages.normalize import normalize_window
from pipeline.stages.runner import run_stage

ROOT = Path(__file__).resolve().parents[1]
SYNC_QUEUE = "sync"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebServer:
    """`python -m tasks.cli serve` (the real `mailpipe serve`: migrate, then uvicorn) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WebServer:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.cli", "serve", "--port", str(self.port), "--no-access-log"],
                cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.base_url + "/openapi.json", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailpipe serve did not start; log: {self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def mail(n: str, subject: str, body: str, *, sender: str = "Ann Lee <ann@example.org>", to: str = "me@example.com",
         day: int = 1, hour: int = 10, reply_to: str | None = None, labels: str = "Inbox") -> bytes:
    """One raw message; `n` makes its Message-ID (<n@example.org>), `reply_to` the parent's `n`."""
    parent = f"In-Reply-To: <{reply_to}@example.org>\nReferences: <{reply_to}@example.org>\n" if reply_to else ""
    return (f"From: {sender}\nTo: {to}\nSubject: {subject}\nMessage-ID: <{n}@example.org>\n{parent}"
            f"X-Gmail-Labels: {labels}\nDate: Mon, {day:02d} Jun 2026 {hour:02d}:00:00 +0000\n\n{body}\n").encode()


def seed_account(engine: Engine, email: str, raws: list[bytes], *, kind: str = "gmail") -> tuple[int, int]:
    """(account id, run id): the messages imported through ingest, normalize, contacts and rules insights,
    in a run that is done."""
    account = ensure_account(engine, email, [email], kind=kind)
    run = begin_run(engine, account, "import", f"test:{email}", stale_seconds=60)
    wid = add_window(engine, run, 0, [RawMessage(f"offset:{email}:{i}", raw) for i, raw in enumerate(raws)])
    end_reading(engine, run, len(raws), 1)
    settings = Settings()
    for stage, work in (("ingest", ingest_window), ("normalize", normalize_window),
                        ("contacts", lambda s, c: contacts_window(s, c, settings)),
                        ("embed", lambda s, c: {}), ("insight", insight_window)):
        assert run_stage(engine, settings, wid, stage, work).outcome == "done", stage
    return account, run


def sync_messages(redis_url: str) -> list[list[object]]:
    """The args of every `mailpipe.sync` task waiting on the sync queue."""
    client = redis.Redis.from_url(redis_url)
    try:
        found = []
        for raw in client.lrange(SYNC_QUEUE, 0, -1):
            message = json.loads(raw)
            if message["headers"]["task"] == "mailpipe.sync":
                body = json.loads(base64.b64decode(message["body"]))
                found.append(body[0])
        return found
    finally:
        client.close()


def purge_sync_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(SYNC_QUEUE)
    client.close()
