"""How GitOps tools read a ModelRollout, with their own code: kstatus from sigs.k8s.io/cli-utils (what Flux's
health checks compute) and Argo CD's Lua runtime, gopher-lua, called the way Argo CD calls health, action and
discovery scripts (the Go program in devtools/.../gomod/gitops). The scripts are read from
manifests/argocd/argocd-cm-patch.yaml, as Argo CD gets them.

The objects are live: rollouts the operator (a process, against the real API server and Prometheus) drove
into each phase, read back from the API server. Several rollouts run at once, each in a namespace of its own,
so the whole table costs about as much as its slowest row. The answers must be the tables of docs/gitops.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from modelrollout import api
from modelrollout.engine.actions import action_refusal
from modelrollout.engine.model import Action, pair_hash
from modelrollout_dev.devenv.gitops import GitopsTool
from modelrollout_dev.sim.istio_exporter import IstioTrafficExporter
from scenario_support import CANARY, RPS, STABLE, Kubectl, OperatorProcess, Rollout, remove_rollouts, wait_for

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.modelrollout.io_ModelRollout"
ACTIONS_KEY = "resource.customizations.actions.modelrollout.io_ModelRollout"
ACTION_ANNOTATION = "modelrollout.io/action"
ACTIONS = tuple(action.value for action in Action)
BAD_QUERY = "sum(rate(llm_refusals_total{model={{ canary.model }}}[1m]))"  # a variable outside a string


@dataclass(frozen=True)
class ArgoScripts:
    health: Path
    discovery: Path
    actions: dict[str, Path]


@pytest.fixture(scope="module")
def argocd(tmp_path_factory: pytest.TempPathFactory) -> ArgoScripts:
    """The scripts of the argocd-cm patch, the actions value parsed as Argo CD parses it (a YAML document in a
    string), written to files for the runner."""
    data = yaml.safe_load(PATCH.read_text())["data"]
    actions = yaml.safe_load(data[ACTIONS_KEY])
    directory = tmp_path_factory.mktemp("argocd")
    (directory / "health.lua").write_text(data[HEALTH_KEY])
    (directory / "discovery.lua").write_text(actions["discovery.lua"])
    by_name = {}
    for definition in actions["definitions"]:
        path = directory / f"{definition['name']}.action.lua"
        path.write_text(definition["action.lua"])
        by_name[definition["name"]] = path
    assert set(by_name) == set(ACTIONS)
    return ArgoScripts(directory / "health.lua", directory / "discovery.lua", by_name)


def refused(obj: dict[str, Any]) -> dict[str, bool]:
    """Action -> whether the operator would ignore it now (its own rule book, as the kubectl plugin asks)."""
    checked = api.checked_spec(obj.get("spec") or {})
    spec = None if isinstance(checked, list) else checked
    status = api.ModelRolloutStatus.model_validate(obj.get("status") or {})
    return {action: action_refusal(action, spec, status) is not None for action in ACTIONS}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


@contextmanager
def rollouts(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    exporter: IstioTrafficExporter,
    cases: dict[str, float | None],
) -> Iterator[dict[str, Rollout]]:
    """One Rollout per case, each in a namespace of its own (with its VirtualService) so they run at once.
    A case's value is the canary's error ratio, or None for no canary traffic at all (stable serves 40/s)."""
    core = client.CoreV1Api(api_client)
    subjects: dict[str, Rollout] = {}
    try:
        for case, canary_errors in cases.items():
            namespace = f"gitops-{case}-{uuid.uuid4().hex[:6]}"
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            subjects[case] = Rollout(api_client, kubectl, namespace)
            exporter.set_traffic(STABLE, namespace, rps=RPS, error_ratio=0.0, latency_ms=200)
            if canary_errors is not None:
                exporter.set_traffic(CANARY, namespace, rps=RPS, error_ratio=canary_errors, latency_ms=200)
        yield subjects
    finally:
        for subject in subjects.values():
            exporter.stop_traffic(CANARY, subject.namespace)
            exporter.stop_traffic(STABLE, subject.namespace)
            remove_rollouts(api_client, subject.namespace)
            core.delete_namespace(subject.namespace)


def patch_spec(rollout: Rollout, spec: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    patched: dict[str, Any] = rollout.objects.patch_namespaced_custom_object(
        api.GROUP, api.VERSION, rollout.namespace, api.PLURAL, rollout.name, {"spec": spec},
        **({"dry_run": "All"} if dry_run else {}),
    )  # fmt: skip
    return patched


LONG = [{"weight": 10, "duration": "60s"}, {"weight": 100}]
MANUAL = [{"weight": 10, "duration": "1s", "approval": "Manual"}, {"weight": 100}]
QUICK = [{"weight": 10, "duration": "1s"}, {"weight": 100}]


@pytest.mark.usefixtures("modelrollout_crd")
def test_kstatus_and_argocd_health_read_every_phase_as_the_docs_say(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    exporter: IstioTrafficExporter,
    operator: OperatorProcess,
    gitops: GitopsTool,
    argocd: ArgoScripts,
) -> None:
    cases = {
        "progressing": 0.0,
        "approval": 0.0,
        "paused": 0.0,
        "promoted": 0.0,
        "rolledback": 0.5,
        "aborted": 0.0,
        "degraded": 0.0,
    }
    with rollouts(api_client, kubectl, exporter, cases) as subject:
        for case, rollout in subject.items():
            if case != "degraded":  # its VirtualService is missing: Degraded (VirtualServiceNotFound)
                rollout.create_vs()
            rollout.create(stages={"approval": MANUAL, "promoted": QUICK}.get(case, LONG))
        patch_spec(subject["paused"], {"paused": True})

        subject["progressing"].wait_phase("Progressing")
        subject["aborted"].wait_phase("Progressing")
        subject["aborted"].act("abort")
        reached = {
            "progressing": subject["progressing"].get(),
            "approval": wait_obj(subject["approval"], "reason", "AwaitingApproval"),
            "paused": wait_obj(subject["paused"], "reason", "Paused"),
            "promoted": wait_obj(subject["promoted"], "phase", "Promoted"),
            "rolledback": wait_obj(subject["rolledback"], "phase", "RolledBack"),
            "aborted": wait_obj(subject["aborted"], "phase", "Aborted"),
            "degraded": wait_obj(subject["degraded"], "reason", "VirtualServiceNotFound"),
        }
        promoted = subject["promoted"]
        # A spec edit the operator has not seen yet: the API server's own answer to a dry-run patch, whose
        # generation is one ahead of the status (a real edit is observed within a tick).
        edit = {"stages": [{"weight": 10, "duration": "2s"}, {"weight": 100}]}
        reached["unobserved"] = patch_spec(promoted, edit, dry_run=True)
        # A rollout the operator has not seen at all: the CRD's default status only.
        reached["new"] = promoted.objects.create_namespaced_custom_object(
            api.GROUP, api.VERSION, promoted.namespace, api.PLURAL,
            {**{k: promoted.get()[k] for k in ("apiVersion", "kind", "spec")}, "metadata": {"name": "next"}},
            dry_run="All",
        )  # fmt: skip
        # A spec the operator refuses, committed after the promotion: the phase stands, the generation failed.
        gates = [{"name": "refusals", "query": BAD_QUERY, "max": 1}]
        patch_spec(promoted, {"analysis": {"gates": gates}})
        reached["invalid"] = wait_obj(promoted, "InvalidSpec", "True")

        readings = {
            case: (gitops.kstatus(obj)[0], gitops.argocd_health(argocd.health, obj)[0])
            for case, obj in reached.items()
        }
        assert readings == {
            "progressing": ("InProgress", "Progressing"),
            "approval": ("InProgress", "Suspended"),
            "paused": ("InProgress", "Suspended"),
            "promoted": ("Current", "Healthy"),
            "rolledback": ("Failed", "Degraded"),
            "aborted": ("Failed", "Degraded"),
            "degraded": ("Failed", "Degraded"),
            "unobserved": ("InProgress", "Progressing"),
            "new": ("InProgress", "Progressing"),
            "invalid": ("Failed", "Degraded"),
        }

        # The messages: the operator's own, through both readers.
        for case in ("progressing", "approval", "paused", "rolledback", "aborted", "degraded"):
            status = reached[case]["status"]
            assert gitops.kstatus(reached[case])[1] == status["message"], case
            assert gitops.argocd_health(argocd.health, reached[case])[1] == status["message"], case
        assert (
            gitops.argocd_health(argocd.health, reached["promoted"])[1]
            == reached["promoted"]["status"]["message"]
        )
        assert reached["invalid"]["status"]["phase"] == "Promoted"  # the phase stands; the new spec failed
        invalid = condition(reached["invalid"]["status"], "InvalidSpec")
        assert invalid is not None
        # kstatus shows the Stalled condition's message (the status message); Argo CD the refusal itself.
        assert gitops.kstatus(reached["invalid"])[1] == reached["invalid"]["status"]["message"]
        assert reached["invalid"]["status"]["message"].startswith(f"invalid spec: {invalid['message']}")
        assert (
            gitops.argocd_health(argocd.health, reached["invalid"])[1]
            == f"invalid spec: {invalid['message']}"
        )
        observed = reached["unobserved"]["status"]["observedGeneration"]
        assert reached["unobserved"]["metadata"]["generation"] == observed + 1
        assert gitops.argocd_health(argocd.health, reached["unobserved"])[1] == (
            f"waiting for the operator: status is for generation {observed}, spec is at {observed + 1}"
        )
        assert reached["new"]["status"] == api.UNOBSERVED_STATUS
        assert (
            gitops.argocd_health(argocd.health, reached["new"])[1]
            == "waiting for the operator: no status yet"
        )

        # Argo CD's discovery offers exactly the actions the operator would take, on every live object.
        for case, obj in reached.items():
            assert gitops.argocd_discovery(argocd.discovery, obj) == refused(obj), case


def wait_obj(rollout: Rollout, key: str, value: str, timeout: float = 30.0) -> dict[str, Any]:
    """The live object once its status has `key` == `value` (a condition type: that condition's status)."""

    def reached(status: dict[str, Any]) -> bool:
        found = condition(status, key)
        return (found["status"] if found else status.get(key)) == value

    rollout.wait_status(f"{key} {value}", reached, timeout)
    obj = rollout.get()
    assert reached(obj["status"]), obj["status"]
    return obj


def run_action(
    gitops: GitopsTool, argocd: ArgoScripts, rollout: Rollout, kubectl: Kubectl, action: str
) -> dict[str, Any]:
    """Argo CD's path for an action: discovery offers it on the live object, the script runs, the merge patch
    from the live object to its result is sent to the API server. Returns the object before."""
    live = rollout.get()
    assert gitops.argocd_discovery(argocd.discovery, live)[action] is False, (action, live.get("status"))
    changed = gitops.argocd_action(argocd.actions[action], live)
    assert changed["metadata"]["annotations"][ACTION_ANNOTATION] == action
    patch = gitops.argocd_action_patch(argocd.actions[action], live)
    assert patch == {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}  # nothing else, status least
    done = kubectl(
        "-n", rollout.namespace, "patch", api.PLURAL, rollout.name, "--type=merge", "-p", json.dumps(patch)
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return live


def answered(rollout: Rollout, action: str) -> dict[str, Any]:
    """The status once the operator consumed `action` (annotation gone) and recorded what it did."""

    def done() -> dict[str, Any] | None:
        obj = rollout.get()
        last = (obj.get("status") or {}).get("lastAction") or {}
        pending = (obj["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        return obj["status"] if last.get("action") == action and pending is None else None

    status: dict[str, Any] = wait_for(f"{action} answered", done, timeout=20)
    assert not status["lastAction"]["result"].startswith("ignored"), status["lastAction"]
    return status


@pytest.mark.usefixtures("modelrollout_crd")
def test_argocd_actions_do_what_they_say(
    api_client: client.ApiClient,
    kubectl: Kubectl,
    exporter: IstioTrafficExporter,
    operator: OperatorProcess,
    gitops: GitopsTool,
    argocd: ArgoScripts,
) -> None:
    cases = {"promote": 0.0, "full": 0.0, "abort": 0.0, "resume": None}
    with rollouts(api_client, kubectl, exporter, cases) as subject:
        for rollout in subject.values():
            rollout.create_vs()
        subject["promote"].create(stages=MANUAL)
        subject["full"].create(stages=[LONG[0], {"weight": 50, "duration": "60s"}, {"weight": 100}])
        subject["abort"].create(stages=LONG)
        subject["resume"].create(stages=QUICK, inconclusiveLimit=3, onInconclusive="Hold")

        # promote at a manual gate: the rollout goes on to Promoted.
        wait_obj(subject["promote"], "reason", "AwaitingApproval")
        run_action(gitops, argocd, subject["promote"], kubectl, "promote")
        # promote-full from stage 1 of 3: straight to the last stage (100%), then Promoted.
        wait_for("stage 1 weights", lambda: subject["full"].weights() == (90, 10))
        run_action(gitops, argocd, subject["full"], kubectl, "promote-full")
        # abort mid-stage: back on stable.
        wait_for("stage 1 weights", lambda: subject["abort"].weights() == (90, 10))
        run_action(gitops, argocd, subject["abort"], kubectl, "abort")
        # resume an Inconclusive hold (the canary gets no traffic to judge).
        held = wait_obj(subject["resume"], "hold", "Inconclusive")
        # A hold reads like a wait for a human: InProgress for kstatus, Suspended for Argo CD.
        assert gitops.kstatus(held)[0] == "InProgress"
        assert gitops.argocd_health(argocd.health, held) == ("Suspended", held["status"]["message"])
        run_action(gitops, argocd, subject["resume"], kubectl, "resume")

        assert answered(subject["promote"], "promote")["lastAction"]["result"] == "advanced to stage 2/2"
        subject["promote"].wait_phase("Promoted")
        assert subject["promote"].weights() == (0, 100)

        assert answered(subject["full"], "promote-full")["lastAction"]["result"] == "went to stage 3/3"
        subject["full"].wait_phase("Promoted")
        assert subject["full"].weights() == (0, 100)

        aborted = answered(subject["abort"], "abort")
        assert (aborted["phase"], subject["abort"].weights()) == ("Aborted", (100, 0))
        # retry, offered now that traffic is on stable: stage 1 again.
        run_action(gitops, argocd, subject["abort"], kubectl, "retry")
        retried = answered(subject["abort"], "retry")
        assert (retried["phase"], retried["stage"]) == ("Progressing", 0)
        wait_for("stage 1 weights again", lambda: subject["abort"].weights() == (90, 10))

        resumed = answered(subject["resume"], "resume")
        assert resumed["lastAction"]["result"] == "lifted the Inconclusive hold"
        subject["resume"].wait_reasons("Resumed")

        # What the discovery script now disables, Argo CD would refuse to run (and the operator to take).
        for rollout in (subject["promote"], subject["full"]):
            assert set(gitops.argocd_discovery(argocd.discovery, rollout.get()).values()) == {True}


def rollout_object(phase: str, *, stage: int = 0, weight: int = 10, **status: Any) -> dict[str, Any]:
    spec = {
        "stable": {"host": STABLE, "model": "gpt-4o"},
        "canary": {"host": CANARY, "model": "claude-opus-4-8"},
        "trafficRouting": {"istio": {"virtualService": {"name": "llm"}}},
        "stages": [{"weight": 10, "duration": "1m"}, {"weight": 50, "duration": "1m"}, {"weight": 100}],
        "analysis": {"gates": [{"name": "error-rate", "template": "istio-error-rate", "max": 0.02}]},
    }
    status = {
        "observedGeneration": 1,
        "phase": phase,
        "stage": stage,
        "canaryWeight": weight,
        "pairHash": pair_hash(api.parse_spec(spec)),
        **status,
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "chat", "namespace": "llm", "generation": 1},
        "spec": spec,
        "status": status,
    }


def _paused_by_spec() -> dict[str, Any]:
    obj = rollout_object("Paused", reason="Paused")
    obj["spec"]["paused"] = True
    return obj


def _invalid() -> dict[str, Any]:
    obj = rollout_object("Degraded", reason="InvalidSpec")
    obj["spec"]["stages"] = [{"weight": 50}, {"weight": 20}, {"weight": 100}]
    obj["status"]["conditions"] = [
        {
            "type": "InvalidSpec",
            "status": "True",
            "reason": "InvalidSpec",
            "message": "spec.stages: stage weights must be strictly increasing",
            "lastTransitionTime": "2026-11-23T10:00:00Z",
        }
    ]
    return obj


def _never_started() -> dict[str, Any]:
    obj = rollout_object("Degraded", weight=0, reason="VirtualServiceNotFound")
    del obj["status"]["pairHash"]
    return obj


def _no_status() -> dict[str, Any]:
    obj = rollout_object("Pending")
    del obj["status"]
    return obj


PROMOTE, FULL, ABORT, RETRY, RESUME = ACTIONS
DISCOVERY = [
    pytest.param(_no_status(), set(), id="no-status"),
    pytest.param(rollout_object("Progressing"), {PROMOTE, FULL, ABORT}, id="stage-1"),
    pytest.param(rollout_object("Progressing", stage=1, weight=50), {PROMOTE, FULL, ABORT}, id="stage-2"),
    pytest.param(rollout_object("Progressing", stage=2, weight=100), {PROMOTE, ABORT}, id="last-stage"),
    pytest.param(rollout_object("Progressing", stage=2, weight=50), {PROMOTE, FULL, ABORT}, id="below-last"),
    pytest.param(
        rollout_object("Paused", stage=1, weight=50, reason="AwaitingApproval", awaitingApproval=True),
        {PROMOTE, FULL, ABORT},
        id="awaiting-approval",
    ),
    pytest.param(
        rollout_object("Paused", reason="Inconclusive", hold="Inconclusive"),
        {PROMOTE, FULL, ABORT, RESUME},
        id="inconclusive-hold",
    ),
    pytest.param(_paused_by_spec(), {ABORT}, id="spec-paused"),
    pytest.param(rollout_object("Promoted", stage=2, weight=100), set(), id="promoted"),
    pytest.param(rollout_object("RolledBack", weight=0), {RETRY}, id="rolled-back"),
    pytest.param(rollout_object("Aborted", weight=0), {RETRY}, id="aborted"),
    pytest.param(
        rollout_object("Degraded", reason="DriftLimit", hold="DriftLimit"),
        {PROMOTE, FULL, ABORT, RESUME},
        id="drift-limit",
    ),
    pytest.param(
        rollout_object("Degraded", reason="VirtualServiceNotFound"), {PROMOTE, FULL, ABORT}, id="no-vs"
    ),
    pytest.param(_never_started(), set(), id="never-started"),
    pytest.param(_invalid(), set(), id="invalid-spec"),
]


@pytest.mark.parametrize(("obj", "enabled"), DISCOVERY)
def test_argocd_discovery_offers_what_the_operator_would_take(
    gitops: GitopsTool, argocd: ArgoScripts, obj: dict[str, Any], enabled: set[str]
) -> None:
    offered = gitops.argocd_discovery(argocd.discovery, obj)
    assert {name for name, disabled in offered.items() if not disabled} == enabled
    assert offered == refused(obj)  # the operator's rule book agrees


def test_every_action_script_only_asks(gitops: GitopsTool, argocd: ArgoScripts) -> None:
    """On an object without annotations (Argo CD's empty-map mending included), each action adds only its
    annotation; an existing annotation of the user's is kept."""
    bare = rollout_object("Progressing")
    annotated = rollout_object("Progressing")
    annotated["metadata"]["annotations"] = {"team": "llm"}
    for action in ACTIONS:
        assert gitops.argocd_action_patch(argocd.actions[action], bare) == {
            "metadata": {"annotations": {ACTION_ANNOTATION: action}}
        }
        changed = gitops.argocd_action(argocd.actions[action], annotated)
        assert changed["metadata"]["annotations"] == {"team": "llm", ACTION_ANNOTATION: action}
        assert {k: v for k, v in changed.items() if k != "metadata"} == {
            k: v for k, v in annotated.items() if k != "metadata"
        }
