"""Promotion benchmark, printing figures (no pass/fail): N rollouts driven at once by one operator process,
on the local control plane with simulated traffic and the real Prometheus. Reports the time until all are
promoted, reconcile latency from the operator's own histogram, and the operator's CPU time and memory. Then
the kill switch: K more rollouts with experiments (overrides, sticky bucket routes, dimension headers) are
aborted one at a time at 10%, and the time from the abort annotation to the VirtualService showing
stable-only (100% on stable, no route the rollout added) is measured for each, as a client polling the API
server every 10 ms sees it. Run: `make bench-promote N=40`."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
from typing import Any

from bench_support import install_crd_and_namespace, process_cpu_seconds, process_rss_mb, rollout_pair
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from modelrollout import api
from modelrollout_dev.devenv.environment import DevEnvironment, runs_root
from modelrollout_dev.devenv.netutil import free_port
from modelrollout_dev.devenv.processes import ProcessSet
from modelrollout_dev.local_operator import local_command
from modelrollout_dev.sim.simulator import Simulator

NAMESPACE = "bench"


def rollout(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return rollout_pair(
        index,
        NAMESPACE,
        [{"weight": 10, "duration": "10s"}, {"weight": 50, "duration": "10s"}, {"weight": 100}],
        {
            "interval": "2s",
            "window": "10s",
            "minRequests": 5,
            "gates": [
                {"name": "error-rate", "template": "istio-error-rate", "max": 0.02},
                {"name": "p99-latency-ms", "template": "istio-latency-p99", "max": 5000},
            ],
        },
    )


def experiment_rollout(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A rollout that stays at 10% for an hour, with every experiment addition, for the kill switch."""
    vs, mro = rollout(index)
    for obj in (vs, mro):
        obj["metadata"]["name"] = f"ks-{index}"
    vs["spec"]["hosts"] = [f"ks-{index}"]
    mro["spec"]["trafficRouting"]["istio"]["virtualService"]["name"] = f"ks-{index}"
    mro["spec"]["stages"] = [{"weight": 10, "duration": "1h"}, {"weight": 100}]
    mro["spec"]["experiment"] = {
        "stickiness": {"bucketHeader": "x-user-bucket"},
        "overrides": [{"header": "x-experiment", "value": "canary", "variant": "canary"}],
    }
    return vs, mro


def stable_only(vs: dict[str, Any], stable: str) -> bool:
    routes = vs["spec"]["http"]
    if any("--mro-" in (route.get("name") or "") for route in routes):
        return False
    managed = next(route for route in routes if route.get("name") == "primary")
    weights = {entry["destination"]["host"]: entry.get("weight", 100) for entry in managed["route"]}
    headers = any("headers" in entry for entry in managed["route"])
    return weights.get(stable) == 100 and not headers


def kill_switch(objects: Any, count: int) -> list[float]:
    """Seconds from each abort annotation to the VirtualService showing stable-only, one rollout at a time."""
    pairs = [experiment_rollout(i) for i in range(count)]
    for vs, mro in pairs:
        objects.create_namespaced_custom_object("networking.istio.io", "v1", NAMESPACE, "virtualservices", vs)
        objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, mro)
    deadline = time.monotonic() + 120
    for _, mro in pairs:
        name = mro["metadata"]["name"]
        while True:
            vs = objects.get_namespaced_custom_object(
                "networking.istio.io", "v1", NAMESPACE, "virtualservices", name
            )
            if any("--mro-buckets" in (r.get("name") or "") for r in vs["spec"]["http"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never reached its experiment routes at 10%")
            time.sleep(0.2)
    times = []
    for _, mro in pairs:
        name, stable = mro["metadata"]["name"], mro["spec"]["stable"]["host"]
        annotated = time.monotonic()
        objects.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, name,
            {"metadata": {"annotations": {f"{api.GROUP}/action": "abort"}}},
        )  # fmt: skip
        while True:
            live = objects.get_namespaced_custom_object(
                "networking.istio.io", "v1", NAMESPACE, "virtualservices", name
            )
            if stable_only(live, stable):
                times.append(time.monotonic() - annotated)
                break
            if time.monotonic() - annotated > 60:
                raise RuntimeError(f"{name}: the abort did not clear the VirtualService within 60 s")
            time.sleep(0.01)
    return times


def operator_figures(metrics_url: str, pid: int) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - our loopback operator
        text = response.read().decode()
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "modelrollout_reconcile_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value

    def quantile(q: float) -> float:
        wanted = q * count
        return next((le for le, cumulative in sorted(buckets) if cumulative >= wanted), float("inf"))

    return {
        "reconciles": count,
        "mean_s": total / count if count else 0.0,
        "p50_le_s": quantile(0.5),
        "p99_le_s": quantile(0.99),
        "cpu_s": process_cpu_seconds(pid),
        "rss_mb": process_rss_mb(pid),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--rollouts", type=int, default=40)
    parser.add_argument("--rps", type=float, default=10.0, help="requests per second per service")
    parser.add_argument("--kill-switch", type=int, default=10, help="experiment rollouts aborted one by one")
    args = parser.parse_args()

    run_dir = runs_root() / "bench"
    environment = DevEnvironment(run_dir, detached=False)
    environment.stop()
    processes = ProcessSet(run_dir)
    simulator: Simulator | None = None
    try:
        state = environment.start(log=lambda m: print(f"[bench] {m}", file=sys.stderr))
        kubectl = [state.kubectl, f"--kubeconfig={state.kubeconfig}"]
        install_crd_and_namespace(kubectl, NAMESPACE)
        api_client = config.new_client_from_config(config_file=state.kubeconfig)
        objects = client.CustomObjectsApi(api_client)
        pairs = [rollout(i) for i in range(args.rollouts)]
        for vs, _ in pairs:
            objects.create_namespaced_custom_object(
                "networking.istio.io", "v1", NAMESPACE, "virtualservices", vs
            )
        simulator = Simulator(api_client, [NAMESPACE], seed=3).start()
        simulator.wait_synced(30)
        for vs, _ in pairs:
            simulator.set_load(f"{vs['metadata']['name']}.{NAMESPACE}.svc.cluster.local", args.rps)
        assert environment.prometheus is not None
        environment.prometheus.set_targets("bench-mesh", [simulator.address])
        environment.prometheus.wait_for_job_up("bench-mesh")

        metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": state.kubeconfig}
        operator, _ = processes.spawn(
            "operator",
            local_command(state.prometheus_url, tick=1, metrics_port=metrics_port),
            die_with_parent=True,
            env=env,
        )
        time.sleep(3)
        started = time.monotonic()
        for _, mro in pairs:
            objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, mro)
        phases: dict[str, int] = {}
        while time.monotonic() - started < 600:
            listed = objects.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL)[
                "items"
            ]
            phases = {}
            for item in listed:
                phase = (item.get("status") or {}).get("phase", "Pending")
                phases[phase] = phases.get(phase, 0) + 1
            if phases.get("Promoted", 0) == args.rollouts:
                break
            time.sleep(1)
        elapsed = time.monotonic() - started
        figures = operator_figures(f"http://127.0.0.1:{metrics_port}/metrics", operator.pid)
        aborts = sorted(kill_switch(objects, args.kill_switch)) if args.kill_switch else []
        minimum = 10 + 10  # the two soaks: no rollout can be promoted sooner
        print(f"modelrollout scale benchmark: {args.rollouts} rollouts, one operator, {args.rps:g} rps each")
        print(
            f"  all promoted:         {phases.get('Promoted', 0)}/{args.rollouts} in {elapsed:.1f}s "
            f"(soaks alone take {minimum}s)"
        )
        print(f"  phases at the end:    {phases}")
        print(
            f"  reconciles:           {figures['reconciles']:.0f}, mean {figures['mean_s'] * 1000:.0f} ms, "
            f"p50 <= {figures['p50_le_s'] * 1000:.0f} ms, p99 <= {figures['p99_le_s'] * 1000:.0f} ms "
            "(histogram bucket bounds)"
        )
        print(
            f"  operator:             {figures['cpu_s']:.1f}s CPU in {elapsed:.0f}s "
            f"({figures['cpu_s'] / elapsed:.0%} of a core), RSS {figures['rss_mb']:.0f} MB"
        )
        if aborts:
            print(
                f"  kill switch:          abort annotation -> VirtualService stable-only, {len(aborts)} "
                f"experiment rollouts one at a time (tick 1 s): median {statistics.median(aborts):.2f}s, "
                f"max {aborts[-1]:.2f}s"
            )
        return 0
    finally:
        if simulator is not None:
            simulator.stop()
        processes.stop_all(grace_seconds=5)
        environment.stop()
        environment.remove()


if __name__ == "__main__":
    sys.exit(main())
