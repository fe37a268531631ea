"""`modelrollout demo`: bring up the local environment, the simulated mesh, the fake model servers, the judge
service and the operator, run the demo rollouts with a live view, inject the regression, print a summary, draw
the timeline, write each rollout's decision report, tear everything down."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client, config

from modelrollout import api, report
from modelrollout_dev.demo import scenario, timeline, view
from modelrollout_dev.devenv.environment import DevEnvironment, runs_root
from modelrollout_dev.devenv.established import wait_established
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.processes import ProcessSet
from modelrollout_dev.local_operator import local_command
from modelrollout_dev.sim.openai_server import FakeModel, FakeOpenAIServer

DEADLINE_SECONDS = 300
# The demo runs from the repository's checkout (the dev tooling is installed from it, editable).
REPO_ROOT = Path(__file__).resolve().parents[3]


class SimClient:
    """The simulator's control API (see modelrollout_dev.sim)."""

    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - our loopback simulator
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our loopback simulator
            raw = response.read()
        return json.loads(raw) if raw else None

    def set_backend(self, namespace: str, host: str, **settings: float | str) -> None:
        self._call("PUT", f"/backends/{namespace}/{host}", settings)

    def set_load(self, host: str, rps: float, experiment_id: str | None = None) -> None:
        flow: dict[str, Any] = {
            "host": f"{host}.{scenario.NAMESPACE}.svc.cluster.local",
            "rps": rps,
            "source_namespace": scenario.NAMESPACE,
        }
        if experiment_id is not None:
            # Each request carries its user's id; the operator's EnvoyFilter turns it into the sticky bucket.
            flow |= {"users": scenario.EXPERIMENT_USERS}
        self._call("POST", "/load", flow)

    def stats(self) -> Any:
        return self._call("GET", "/stats")

    def users(self) -> Any:
        return self._call("GET", "/stats/users")


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object from the API server, got {type(value).__name__}")
    return value


def _log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


class Demo:
    def __init__(self, run_dir: Path, picture: Path) -> None:
        self.run_dir = run_dir
        self.picture = picture
        self.environment = DevEnvironment(run_dir, detached=False)
        self.processes = ProcessSet(run_dir)
        self.stopping = False
        self._previous_counts: dict[str, int] = {}
        # The last looks at mirrored copies and per-user answers: the view diffs against the oldest, a few
        # seconds back, so the shares it shows rest on a few hundred requests rather than one second's worth.
        self._looks: deque[tuple[dict[str, int], dict[str, dict[str, int]]]] = deque(maxlen=6)
        self.models: FakeOpenAIServer | None = None
        self.judge_port: int | None = None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc, _ = self.processes.spawn(name, argv, die_with_parent=True, env=env)
        return proc

    def run(self) -> int:
        self.environment.stop()  # whatever an interrupted earlier demo left in this run directory
        state = self.environment.start(log=_log)
        env = {**os.environ, "KUBECONFIG": state.kubeconfig}
        _log(f"environment up in {state.started_seconds['total']:.1f}s; logs in {self.run_dir / 'logs'}")
        kubectl = [state.kubectl, f"--kubeconfig={state.kubeconfig}"]
        crds = REPO_ROOT / "crds"
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(crds)], check=True, capture_output=True)
        wait_established(kubectl, crds).check_returncode()
        subprocess.run([*kubectl, "create", "namespace", scenario.NAMESPACE], check=True, capture_output=True)

        config.load_kube_config(config_file=state.kubeconfig)  # type: ignore[no-untyped-call]
        objects = client.CustomObjectsApi()
        for rollout in scenario.ROLLOUTS:
            objects.create_namespaced_custom_object(
                "networking.istio.io",
                "v1",
                scenario.NAMESPACE,
                "virtualservices",
                scenario.virtual_service(rollout),
            )

        sim_address = self._start_simulator(env)
        sim = SimClient(sim_address)
        prometheus = self.environment.prometheus
        if prometheus is None:
            raise RuntimeError("the environment started without Prometheus")
        prometheus.set_targets("mesh", [sim_address])
        for rollout in scenario.ROLLOUTS:
            # The backends serve the models the rollouts name: vLLM's metrics are labelled by model.
            sim.set_backend(scenario.NAMESPACE, rollout.stable, model_name=rollout.stable_model)
            sim.set_backend(scenario.NAMESPACE, rollout.canary, model_name=rollout.canary_model)
            sim.set_load(rollout.host, scenario.RPS, rollout.experiment_id)
        prometheus.wait_for_job_up("mesh", timeout=30)

        models_url = self._start_judging(env)
        self._spawn("operator", local_command(state.prometheus_url, tick=1), env)
        for rollout in scenario.ROLLOUTS:
            objects.create_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                scenario.NAMESPACE,
                api.PLURAL,
                scenario.model_rollout(rollout, models_url),
            )
        return self._watch(objects, sim)

    def _start_judging(self, env: dict[str, str]) -> str:
        """The judged rollouts' models as fake OpenAI-compatible servers (in this process) and the judge
        service (`modelrollout judge`, its own process) scraped by Prometheus; the evaluation set. Returns the
        models' URL."""
        served = {scenario.JUDGE_MODEL: FakeModel(judge=True, noise=0.8, position_bias=1.0)}
        for rollout in scenario.ROLLOUTS:
            if rollout.qualities is not None:
                served[rollout.stable_model] = FakeModel(quality=rollout.qualities[0])
                served[rollout.canary_model] = FakeModel(quality=rollout.qualities[1])
        self.models = FakeOpenAIServer(served, seed=7).start()
        client.CoreV1Api().create_namespaced_config_map(
            scenario.NAMESPACE,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=scenario.EVAL_SET), data={"prompts": scenario.EVAL_PROMPTS}
            ),
        )
        port = self.judge_port = free_port()
        argv = [sys.executable, "-m", "modelrollout.cli", "judge", "-n", scenario.NAMESPACE]
        self._spawn("judge", [*argv, "--port", str(port), "--sync-interval", "1"], env)
        prometheus = self.environment.prometheus
        if prometheus is None:
            raise RuntimeError("the environment started without Prometheus")
        prometheus.set_targets("judge", [f"127.0.0.1:{port}"])
        prometheus.wait_for_job_up("judge", timeout=30)
        return self.models.url

    def _judge_samples(self, name: str) -> list[Any]:
        """The redacted sample pairs the judge kept for a rollout, for its report (none if not judged)."""
        if self.judge_port is None:
            return []
        url = f"http://127.0.0.1:{self.judge_port}/v1/samples/{scenario.NAMESPACE}/{name}"
        with urllib.request.urlopen(url, timeout=5) as response:
            samples = json.load(response).get("samples")
        return samples if isinstance(samples, list) else []

    def _start_simulator(self, env: dict[str, str]) -> str:
        """Start the simulated mesh; it prints its URL as the first line of its output."""
        log = self.run_dir / "logs" / "simulator.log"
        argv = [
            sys.executable,
            "-m",
            "modelrollout_dev.sim",
            "--namespace",
            scenario.NAMESPACE,
            "--port",
            "0",
            "--seed",
            "7",
        ]
        self._spawn("simulator", argv, env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = log.read_text().splitlines() if log.exists() else []
            url = next((line.strip() for line in lines if line.startswith("http://")), None)
            if url:
                return url.removeprefix("http://").rstrip("/")
            time.sleep(0.1)
        raise RuntimeError(f"the simulator did not start; see {log}")

    def _watch(self, objects: client.CustomObjectsApi, sim: SimClient) -> int:
        started = time.monotonic()
        series = {
            r.name: timeline.Series(name=f"{r.name}: {r.stable_model} -> {r.canary_model}")
            for r in scenario.ROLLOUTS
        }
        regressed: set[str] = set()
        interactive = sys.stdout.isatty()
        last_phases: dict[str, str] = {}
        rollouts: list[dict[str, Any]] = []
        while not self.stopping and time.monotonic() - started < DEADLINE_SECONDS:
            elapsed = time.monotonic() - started
            rollouts = [
                _as_dict(
                    objects.get_namespaced_custom_object(
                        api.GROUP, api.VERSION, scenario.NAMESPACE, api.PLURAL, r.name
                    )
                )
                for r in scenario.ROLLOUTS
            ]
            shares = self._canary_shares(sim)
            extras = self._experiment_lines(sim)
            for spec, live in zip(scenario.ROLLOUTS, rollouts, strict=True):
                status = live.get("status") or {}
                self._record(series[spec.name], live, shares.get(spec.name), elapsed)
                if (
                    spec.regress_at_stage is not None
                    and spec.name not in regressed
                    and status.get("stage", 0) >= spec.regress_at_stage
                    and status.get("phase") == "Progressing"
                ):
                    sim.set_backend(
                        scenario.NAMESPACE, spec.canary, error_rate=scenario.REGRESSION_ERROR_RATE
                    )
                    regressed.add(spec.name)
                    _log(
                        f"{spec.name}: the canary {spec.canary_model} now fails "
                        f"{scenario.REGRESSION_ERROR_RATE:.0%} of requests"
                    )
            if interactive:
                print("\033[2J\033[H" + view.screen(rollouts, shares, elapsed, extras), flush=True)
            else:
                for live in rollouts:
                    status = live.get("status") or {}
                    name = live["metadata"]["name"]
                    key = f"{status.get('phase')} {status.get('progress')} {status.get('canaryWeight')}"
                    if status.get("shadow"):
                        key += f" {api.exposure(0, int(status['shadow']))}"
                    if last_phases.get(name) != key:
                        last_phases[name] = key
                        print(f"{elapsed:5.0f}s  {name:<10} {key}", flush=True)
                        for line in extras.get(name, []):
                            print(f"{'':17}{line.strip()}", flush=True)
            if all(
                (r.get("status") or {}).get("phase") in ("Promoted", "RolledBack", "Aborted")
                for r in rollouts
            ):
                break
            time.sleep(1)
        print("\n".join(view.rollout_panel(r, None)[0] for r in rollouts))
        text, ok = view.summary(rollouts, {r.name: r.expected_phase for r in scenario.ROLLOUTS})
        print(text)
        picture = timeline.draw(list(series.values()), self.picture)
        print(f"timeline: {picture}")
        for live in rollouts:
            name = live["metadata"]["name"]
            page = self.picture.with_name(
                self.picture.name.replace("demo-timeline-", f"demo-report-{name}-")
            ).with_suffix(".html")
            page.write_text(report.render(live, datetime.now(UTC), "html", self._judge_samples(name)))
            print(f"decision report of {name}: {page}")
        return 0 if ok else 1

    @staticmethod
    def _record(series: timeline.Series, live: dict[str, Any], share: float | None, elapsed: float) -> None:
        status = live.get("status") or {}
        series.times.append(elapsed)
        series.weights.append(status.get("canaryWeight", 0))
        if share is not None:
            series.canary_share.append((elapsed, share))
        analysis = status.get("lastAnalysis") or {}
        fresh = analysis.get("at") is not None and analysis.get("at") != series.last_check_at
        series.last_check_at = analysis.get("at")
        for gate in analysis.get("gates") or []:
            # Only new checks are plotted: after a rollback the last one stays in status but is not current.
            if fresh and gate.get("value") is not None:
                series.gate_values.setdefault(gate["name"], []).append((elapsed, gate["value"]))
            if gate.get("max") is not None:
                series.thresholds[gate["name"]] = gate["max"]
        if status.get("phase") == "RolledBack" and series.rolled_back_at is None:
            series.rolled_back_at = elapsed
        if status.get("phase") == "Promoted" and series.promoted_at is None:
            series.promoted_at = elapsed

    def _canary_shares(self, sim: SimClient) -> dict[str, float | None]:
        """Share of the requests since the previous look that went to each rollout's canary."""
        try:
            counts: dict[str, int] = sim.stats()["since_start"]["destinations"]
        except (OSError, KeyError, TypeError):
            return {}
        previous, self._previous_counts = self._previous_counts, counts
        shares: dict[str, float | None] = {}
        for rollout in scenario.ROLLOUTS:
            canary_key, stable_key = (
                f"{scenario.NAMESPACE}/{host}" for host in (rollout.canary, rollout.stable)
            )
            to_canary = counts.get(canary_key, 0) - previous.get(canary_key, 0)
            to_stable = counts.get(stable_key, 0) - previous.get(stable_key, 0)
            total = to_canary + to_stable
            shares[rollout.name] = to_canary / total if total > 0 else None
        return shares

    def _experiment_lines(self, sim: SimClient) -> dict[str, list[str]]:
        """For each experiment rollout, over the last few seconds: mirrored copies per stable request, and the
        share of the users it answered that the canary answered."""
        try:
            mirrored: dict[str, int] = sim.stats()["since_start"]["mirrored"]
            users: dict[str, dict[str, int]] = sim.users()["since_start"]
        except (OSError, KeyError, TypeError):
            return {}
        previous_mirrored, previous_users = self._looks[0] if self._looks else ({}, {})
        self._looks.append((mirrored, users))
        lines: dict[str, list[str]] = {}
        for rollout in scenario.ROLLOUTS:
            if rollout.experiment_id is None:
                continue
            canary_key, stable_key = (
                f"{scenario.NAMESPACE}/{host}" for host in (rollout.canary, rollout.stable)
            )
            answered = {key: 0 for key in (canary_key, stable_key)}
            seen = on_canary = 0
            for user, answers in users.items():
                before = previous_users.get(user, {})
                new = {key: answers.get(key, 0) - before.get(key, 0) for key in answered}
                if any(new.values()):
                    seen += 1
                    on_canary += new[canary_key] > 0
                for key, count in new.items():
                    answered[key] += count
            copies = mirrored.get(canary_key, 0) - previous_mirrored.get(canary_key, 0)
            stable_answers = answered[stable_key]
            lines[rollout.name] = view.experiment_lines(
                copies / stable_answers if stable_answers else None,
                on_canary / seen if seen else None,
                seen,
            )
        return lines

    def stop(self) -> None:
        self.processes.stop_all(grace_seconds=5)
        if self.models is not None:
            self.models.stop()
        self.environment.stop()
        self.environment.remove()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`modelrollout demo`."""
    demo = subparsers.add_parser(
        "demo", help="two rollouts on simulated traffic: one promotes, one rolls back"
    )
    demo.set_defaults(handler=lambda _args: main())


def main() -> int:
    run_dir = runs_root() / "demo"
    picture = runs_root() / f"demo-timeline-{time.strftime('%Y%m%d-%H%M%S')}.png"
    demo = Demo(run_dir, picture)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        demo.stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    try:
        return demo.run()
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    finally:
        _log("tearing down")
        demo.stop()
        _log("stopped")
