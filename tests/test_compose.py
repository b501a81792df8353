"""docker-compose.yml, checked without Docker: the topology, exec-form commands, health checks everywhere."""

from __future__ import annotations

from typing import Any

import yaml

from tasks.config import QUEUES, SYNC_QUEUE
from tests.conftest import ROOT

ONE_SHOT = {"migrate"}
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merges `<<:` keys
    return loaded


def test_every_process_runs_in_the_foreground_with_a_health_check() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "beat", "flower",
                             *(f"worker-{q}" for q in (*QUEUES, SYNC_QUEUE))}
    for name, service in services.items():
        command = service.get("command")
        if command is not None:  # exec form: the process is PID 1's child directly, and gets the signals
            assert isinstance(command, list) and command[0] not in SHELLS, name
        if name not in ONE_SHOT:
            test = service["healthcheck"]["test"]
            assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name
            assert service["restart"] == "unless-stopped", name
    mailpipe = [n for n, s in services.items() if s.get("image") == "mailpipe:dev" and n not in ONE_SHOT]
    for name in mailpipe:  # nothing starts before the schema is at head
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert "noeviction" in services["redis"]["command"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector")


def test_one_worker_per_queue_one_beat_web_and_flower_on_loopback() -> None:
    services = _compose()["services"]
    for queue in (*QUEUES, SYNC_QUEUE):
        worker = services[f"worker-{queue}"]
        command = worker["command"]
        assert command[:4] == ["celery", "-A", "tasks", "worker"]
        assert command[command.index("-Q") + 1] == queue and command[command.index("-n") + 1] == f"{queue}@%h"
        assert f"-d {queue}@$$HOSTNAME" in worker["healthcheck"]["test"][1]  # pings that very node
    beats = [n for n, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]  # RedBeat comes from the config
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "python", "-m", "tasks.health", "beat"]
    web = services["web"]
    assert web["command"] == ["mailpipe", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert web["healthcheck"]["test"][-1] == "http://127.0.0.1:8080/healthz"
    flower = services["flower"]
    assert flower["command"] == ["mailpipe", "flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["healthcheck"]["test"][-1] == "http://127.0.0.1:5555/healthcheck"
    env = flower["environment"]
    assert env["MAILPIPE_FLOWER_AUTH"].startswith("${MAILPIPE_FLOWER_AUTH:?")  # compose refuses to start without
    assert env["MAILPIPE_BROKER_URL"] == "redis://redis:6379/0"  # the merged common environment
    assert env["MAILPIPE_FLOWER_DB"].startswith("/var/lib/flower/") and "flower:/var/lib/flower" in flower["volumes"]
