"""Debian's Prometheus and promtool for the monitoring tests, and a Prometheus server to run beside a worker.

``make test`` unpacks Debian's ``prometheus`` package into ``.tools/prometheus`` (not installed:
no service, no root-owned files). A missing binary fails the test that needs it, saying how to
get it: a skip would hide that the rules were never checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.devstack.process import free_port, spawn, terminate, wait_until

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
_UNPACKED = ROOT / ".tools" / "prometheus" / "usr" / "bin"


def binary(name: str) -> Path:
    """``promtool`` or ``prometheus``: $GPM_TEST_PROMETHEUS_BIN, then .tools/, then PATH; a loud failure if none."""
    for candidate in (os.environ.get("GPM_TEST_PROMETHEUS_BIN"), str(_UNPACKED), None):
        found = shutil.which(name, path=candidate) if candidate is not None else shutil.which(name)
        if found:
            return Path(found)
    pytest.fail(
        f"{name} not found: `make test` unpacks Debian's prometheus package into .tools/ "
        "(or set GPM_TEST_PROMETHEUS_BIN to a directory holding promtool and prometheus)"
    )


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/monitoring (rule files name each other relative to it)."""
    return subprocess.run(  # noqa: S603 - our own arguments
        [str(binary("promtool")), *args], cwd=MONITORING, capture_output=True, text=True, check=False, timeout=120
    )


@dataclass
class Prometheus:
    """A real Prometheus scraping ``targets`` every second and evaluating alerts.yml every second."""

    workdir: Path
    targets: list[str]
    port: int = 0
    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        """Start it and wait until it answers."""
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "alerts.yml")],
            "scrape_configs": [{"job_name": "graph-postgres-manager", "static_configs": [{"targets": self.targets}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = self.workdir / "prometheus.log"
        self._process = spawn(
            "prometheus",
            [
                str(binary("prometheus")),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            log,
            self.workdir,
        )
        wait_until("prometheus", self._process, lambda: self._get("/-/ready") is not None, 30, log)
        return self

    def stop(self) -> None:
        """Stop it."""
        terminate(self._process)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its ``data``; fails the test on an error status."""
        body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        assert body is not None
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                body: bytes = response.read()
                return body
        except OSError:
            return None
