"""A real Prometheus server on loopback that scrapes the targets it is given every second.

Targets come from file-based service discovery: each job is one JSON file in `<run dir>/prometheus/targets/`,
which Prometheus picks up within about a second without a restart, so tests can add and remove exporters
while the server runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modelrollout_dev.devenv.controlplane import StartError
from modelrollout_dev.devenv.netutil import free_port, http_ok, wait_until
from modelrollout_dev.devenv.processes import ProcessRecord, ProcessSet

SCRAPE_INTERVAL = "1s"


def prometheus_binary() -> Path:
    explicit = os.environ.get("PROMETHEUS_BIN")
    found = explicit or shutil.which("prometheus")
    if not found or not os.access(found, os.X_OK):
        raise StartError(
            "no Prometheus server binary: install Debian's `prometheus` package (`make deps` does) "
            "or set PROMETHEUS_BIN"
        )
    return Path(found)


def prometheus_config(
    targets_dir: Path, scrape_interval: str = SCRAPE_INTERVAL, query_log: Path | None = None
) -> dict[str, Any]:
    """`query_log`: where Prometheus writes every query it answers (one JSON line each: the query, when); the
    scale benchmark counts from it which queries the operator asked and how often."""
    settings: dict[str, Any] = {
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "evaluation_interval": scrape_interval,
    }
    if query_log is not None:
        settings["query_log_file"] = str(query_log)
    return {
        "global": settings,
        "scrape_configs": [
            {
                # Each target file sets its own `job` label; Prometheus keeps a job label given by discovery.
                "job_name": "targets",
                "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "1s"}],
            }
        ],
    }


def target_group(
    job: str, addresses: list[str], labels: Mapping[str, str] | None = None, metrics_path: str = "/metrics"
) -> list[dict[str, Any]]:
    for address in addresses:
        host = address.rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            raise ValueError(f"scrape target {address} is not on loopback")
    return [
        {
            "targets": addresses,
            "labels": {"job": job, "__metrics_path__": metrics_path, **dict(labels or {})},
        }
    ]


class PrometheusServer:
    def __init__(self, run_dir: Path, processes: ProcessSet, *, die_with_parent: bool) -> None:
        self.dir = run_dir / "prometheus"
        self.targets_dir = self.dir / "targets"
        self.processes = processes
        self.die_with_parent = die_with_parent
        self.url = ""
        self.query_log = self.dir / "queries.log"
        self._record: ProcessRecord | None = None

    def start(self, timeout: float = 60.0) -> str:
        binary = prometheus_binary()
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(prometheus_config(self.targets_dir, query_log=self.query_log), sort_keys=False)
        )
        last_error = ""
        for _ in range(3):  # the probed port may be taken before Prometheus binds it
            port = free_port()
            argv = [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ]
            proc, record = self.processes.spawn("prometheus", argv, die_with_parent=self.die_with_parent)
            url = f"http://127.0.0.1:{port}"

            def ready(proc: subprocess.Popen[bytes] = proc, url: str = url) -> bool:
                if proc.poll() is not None:
                    return True  # decided below
                return http_ok(f"{url}/-/ready")

            became_ready = wait_until(ready, timeout)
            if became_ready and proc.poll() is None:
                self.url, self._record = url, record
                return url
            last_error = self.processes.log_tail(record)
            self.processes.stop(record, grace_seconds=2.0)
            if "address already in use" not in last_error:
                break
        raise StartError(f"Prometheus did not start; log tail:\n{last_error}")

    def stop(self) -> None:
        if self._record is not None:
            self.processes.stop(self._record)
            self._record = None

    def set_targets(
        self,
        job: str,
        addresses: list[str],
        labels: Mapping[str, str] | None = None,
        metrics_path: str = "/metrics",
    ) -> None:
        path = self.targets_dir / f"{job}.json"
        tmp = path.with_suffix(".tmp")  # not matched by *.json: Prometheus never reads a half-written file
        tmp.write_text(json.dumps(target_group(job, addresses, labels, metrics_path)))
        tmp.replace(path)

    def remove_targets(self, job: str) -> None:
        (self.targets_dir / f"{job}.json").unlink(missing_ok=True)

    def api_get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.load(response)

    def wait_for_job_up(self, job: str, timeout: float = 30.0) -> None:
        """Wait until every target of `job` has been scraped successfully at least once."""

        def up() -> bool:
            targets = self.api_get("/api/v1/targets", {"state": "active"})["data"]["activeTargets"]
            mine = [t for t in targets if t["labels"].get("job") == job]
            return bool(mine) and all(t["health"] == "up" for t in mine)

        if not wait_until(up, timeout, interval=0.25):
            targets = self.api_get("/api/v1/targets")["data"]["activeTargets"]
            mine = [t for t in targets if t["labels"].get("job") == job]
            raise TimeoutError(f"job {job} not up within {timeout:.0f}s: {mine}")

    def wait_for_series(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []

        def present() -> bool:
            nonlocal result
            result = self.api_get("/api/v1/query", {"query": promql, "time": f"{time.time():.3f}"})["data"][
                "result"
            ]
            return bool(result)

        if not wait_until(present, timeout, interval=0.25):
            raise TimeoutError(f"no series for {promql!r} within {timeout:.0f}s")
        return result
