"""Flower as `mailpipe flower` starts it: the packaged flower.cfg (auth from the environment, persistence,
limits, loopback), /healthcheck open, the dashboard behind basic auth."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_packaged_config_and_the_checkout_shim_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPIPE_FLOWER_AUTH", "ops:one, admin:two")
    monkeypatch.setenv("MAILPIPE_FLOWER_DB", str(tmp_path / "state" / "flower.db"))
    monkeypatch.delenv("MAILPIPE_FLOWER_ADDRESS", raising=False)
    seen = []
    for path in (ROOT / "flower.cfg", ROOT / "tasks" / "flower.cfg"):
        config: dict[str, object] = {"__file__": str(path)}  # as tornado reads it
        exec(path.read_text(), config, config)
        seen.append({k: config[k] for k in ("address", "port", "basic_auth", "persistent", "db",
                                             "state_save_interval", "max_tasks", "purge_offline_workers")})
    assert seen[0] == seen[1]
    assert seen[0] == {"address": "127.0.0.1", "port": 5555, "basic_auth": ["ops:one", "admin:two"],
                       "persistent": True, "db": str(tmp_path / "state" / "flower.db"),
                       "state_save_interval": 60_000, "max_tasks": 10_000, "purge_offline_workers": 300}
    assert (tmp_path / "state").is_dir()  # the state file's folder is made


def test_mailpipe_flower_serves_with_auth_and_persists(mailpipe_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, **mailpipe_env, "MAILPIPE_FLOWER_AUTH": "ops:s3cret", "MAILPIPE_FLOWER_PORT": str(port),
           "MAILPIPE_FLOWER_DB": str(tmp_path / "flower.db")}
    env.pop("MAILPIPE_FLOWER_ADDRESS", None)
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tasks.cli", "flower"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(f"{base}/healthcheck")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
        assert (status, body) == (200, b"OK")  # open, for the container healthcheck
        check = [sys.executable, "-m", "tasks.health", "http"]
        assert subprocess.run([*check, f"{base}/healthcheck"], cwd=ROOT, timeout=30).returncode == 0
        assert subprocess.run([*check, f"{base}/nope"], cwd=ROOT, timeout=30).returncode == 1
        assert _get(f"{base}/workers")[0] == 401
        assert _get(f"{base}/workers", auth="ops:wrong")[0] == 401
        assert _get(f"{base}/workers", auth="ops:s3cret")[0] == 200
        # `mailpipe flower` became Flower itself (exec: signals reach it), listening on loopback only.
        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == "LISTEN"}
        assert {(a.ip, a.port) for a in listening} == {("127.0.0.1", port)}
        assert "flower" in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert list(tmp_path.glob("flower.db*")), log.read_text()[-2000:]  # state saved on the way out


def test_mailpipe_flower_needs_a_broker_with_events(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILPIPE_")}
    env["MAILPIPE_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "tasks.cli", "flower"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "MAILPIPE_BROKER_URL" in result.stderr
