"""The Argo CD health check for ModelRollout, run in a real Lua interpreter (lupa) against a status of every
phase, and the argocd-cm patch that carries it and the resource actions.

Argo CD runs these scripts with gopher-lua; the gitops tier (tests/gitops/test_gitops_readers.py)
runs them there, the way Argo CD calls them, on rollouts the operator drove into every phase. This table stays
in the unit tier because it earns its place there: it needs no Go build and no servers, so an edit to the
script is checked in a second, against edge cases no live rollout shows (no metadata, an unknown phase, an
empty message, a status newer than the generation), and in two dialects (Lua 5.1, and the newest Lua lupa
ships) to catch anything that only works in one.

The ConfigMap patch must hold exactly the scripts. It is generated from the .lua files:
`python tests/unit/test_argocd_health.py` rewrites manifests/argocd/argocd-cm-patch.yaml.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lupa
import lupa.lua51
import pytest
import yaml

from modelrollout import api
from modelrollout.engine.model import Action

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
SCRIPT = ARGOCD / "modelrollout-health.lua"
PATCH = ARGOCD / "argocd-cm-patch.yaml"
SNIPPET = ARGOCD / "application-snippet.yaml"
ACTIONS = ARGOCD / "actions"
ACTION_NAMES = ("promote", "promote-full", "abort", "retry", "resume")
HEALTH_KEY = "resource.customizations.health.modelrollout.io_ModelRollout"
ACTIONS_KEY = "resource.customizations.actions.modelrollout.io_ModelRollout"
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

PATCH_HEADER = """\
# Generated from modelrollout-health.lua and actions/*.lua by `python tests/unit/test_argocd_health.py`;
# edit the .lua files. Adds the ModelRollout health check and resource actions to Argo CD:
#   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm-patch.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def _block(script: str, indent: int) -> str:
    return "".join(f"{' ' * indent}{line}\n" if line else "\n" for line in script.splitlines())


def render_patch(health: str, discovery: str, actions: dict[str, str]) -> str:
    """The health script under its key; the actions under theirs, in Argo CD's format (a YAML document in a
    string: `discovery.lua` and a list of `definitions`, each a name and its `action.lua`)."""
    definitions = "".join(
        f"      - name: {name}\n        action.lua: |\n{_block(script, 10)}"
        for name, script in actions.items()
    )
    return (
        f"{PATCH_HEADER}  {HEALTH_KEY}: |\n{_block(health, 4)}"
        f"  {ACTIONS_KEY}: |\n    discovery.lua: |\n{_block(discovery, 6)}    definitions:\n{definitions}"
    )


def render_from_files() -> str:
    return render_patch(
        SCRIPT.read_text(),
        (ACTIONS / "discovery.lua").read_text(),
        {name: (ACTIONS / f"{name}.lua").read_text() for name in ACTION_NAMES},
    )


LuaFactory = Callable[[], Any]
RUNTIMES: dict[str, LuaFactory] = {"lua5.1": lupa.lua51.LuaRuntime, "newest": lupa.LuaRuntime}


def _to_lua(runtime: Any, value: Any) -> Any:
    """Python data to Lua tables the way Argo CD hands the object over: maps and 1-based arrays; nulls are
    absent keys."""
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    return value


@pytest.fixture(params=sorted(RUNTIMES))
def health(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], tuple[str, str]]:
    script = SCRIPT.read_text()
    factory = RUNTIMES[request.param]

    def run(obj: dict[str, Any]) -> tuple[str, str]:
        runtime = factory()  # a fresh interpreter per object: no state leaks between cases
        runtime.globals().obj = _to_lua(runtime, obj)
        result = runtime.execute(script)
        return str(result["status"]), str(result["message"])

    return run


def rollout(status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelrollout.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "chat", "namespace": "llm", "generation": generation},
        "spec": {"stages": [{"weight": 10}, {"weight": 100}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


def status_of(phase: str, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "observedGeneration": 3,
        "phase": phase,
        "reason": reason,
        "stage": 1,
        "canaryWeight": 10,
        "message": message,
        "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
        **extra,
    }


PHASES = [
    ("Pending", "", "Progressing"),
    ("Progressing", "StageAdvanced", "Progressing"),
    ("Progressing", "Analysing", "Progressing"),
    ("Paused", "AwaitingApproval", "Suspended"),
    ("Paused", "Paused", "Suspended"),
    ("Paused", "Inconclusive", "Suspended"),
    ("Paused", "MetricsUnavailable", "Suspended"),
    ("Promoted", "Promoted", "Healthy"),
    ("RolledBack", "AnalysisFailed", "Degraded"),
    ("Aborted", "Aborted", "Degraded"),
    ("Degraded", "VirtualServiceNotFound", "Degraded"),
    ("Degraded", "DriftLimit", "Degraded"),
    ("Degraded", "InvalidSpec", "Degraded"),
]


@pytest.mark.parametrize(("phase", "reason", "expected"), PHASES)
def test_every_phase_maps_to_its_health_with_the_operators_message(
    health: Callable[[dict[str, Any]], tuple[str, str]], phase: str, reason: str, expected: str
) -> None:
    message = f"stage 2/2 at 10%: {phase} because {reason or 'nothing yet'}"
    assert health(rollout(status_of(phase, reason, message))) == (expected, message)


def test_every_phase_of_the_api_is_covered() -> None:
    assert {phase for phase, _, _ in PHASES} == {phase.value for phase in api.Phase}


@pytest.mark.parametrize("phase", ["Promoted", "Progressing", "RolledBack"])
def test_an_invalid_spec_is_degraded_whatever_the_phase(
    health: Callable[[dict[str, Any]], tuple[str, str]], phase: str
) -> None:
    status = status_of(phase, phase, "promoted: claude serves 100%")
    status["conditions"].append(
        {"type": "InvalidSpec", "status": "True", "reason": "InvalidSpec", "message": "spec.stages: bad"}
    )
    assert health(rollout(status)) == ("Degraded", "invalid spec: spec.stages: bad")
    status["conditions"][-1]["status"] = "False"
    assert health(rollout(status))[0] != "Degraded" or phase == "RolledBack"


def test_a_rolled_back_rollout_shows_the_rollback_message(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    message = "rolled back at stage 2/3: error-rate 0.31 violates <= 0.02"
    status = status_of(
        "RolledBack",
        "AnalysisFailed",
        message,
        rollback={"reason": "AnalysisFailed", "gate": "error-rate", "value": 0.31, "threshold": "<= 0.02"},
    )
    assert health(rollout(status)) == ("Degraded", message)


@pytest.mark.parametrize("phase", ["Promoted", "RolledBack", "Paused"])
def test_a_status_older_than_the_spec_is_progressing_whatever_its_phase(
    health: Callable[[dict[str, Any]], tuple[str, str]], phase: str
) -> None:
    status = status_of(phase, "x", "old news", observedGeneration=2)
    assert health(rollout(status, generation=3)) == (
        "Progressing",
        "waiting for the operator: status is for generation 2, spec is at 3",
    )


def test_a_status_without_observed_generation_is_waiting(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    status = status_of("Promoted", "Promoted", "promoted")
    del status["observedGeneration"]
    assert health(rollout(status)) == (
        "Progressing",
        "waiting for the operator: status is for generation none, spec is at 3",
    )


def test_a_status_newer_than_the_generation_seen_is_not_waiting(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    # Argo CD may hold a slightly older copy of metadata than status; only an older status means waiting.
    status = status_of("Promoted", "Promoted", "promoted: claude-opus-4-8 serves 100%", observedGeneration=4)
    assert health(rollout(status, generation=3))[0] == "Healthy"


# None and {}: stored before the CRD gave a default status; then the default itself (observedGeneration 0).
@pytest.mark.parametrize("status", [None, {}, {"observedGeneration": 0}])
def test_no_status_yet_is_progressing(
    health: Callable[[dict[str, Any]], tuple[str, str]], status: dict[str, Any] | None
) -> None:
    assert health(rollout(status)) == ("Progressing", "waiting for the operator: no status yet")


def test_a_status_beyond_the_default_is_the_operators(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    # observedGeneration 0 with anything else in it was written by someone: it is not "no status yet".
    assert health(rollout({"observedGeneration": 0, "phase": "Progressing", "message": "m"})) == (
        "Progressing",
        "waiting for the operator: status is for generation 0, spec is at 3",
    )


def test_no_metadata_generation_still_maps_the_phase(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    obj = rollout(status_of("Promoted", "Promoted", "promoted"))
    del obj["metadata"]["generation"]
    assert health(obj) == ("Healthy", "promoted")


def test_an_empty_message_falls_back_to_phase_and_reason(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    assert health(rollout(status_of("Paused", "AwaitingApproval", ""))) == (
        "Suspended",
        "phase Paused (AwaitingApproval)",
    )


@pytest.mark.parametrize("phase", ["Exploded", None])
def test_an_unknown_or_missing_phase_is_unknown(
    health: Callable[[dict[str, Any]], tuple[str, str]], phase: str | None
) -> None:
    status = status_of("x", "x", "something")
    status["phase"] = phase
    got, message = health(rollout(status))
    assert got == "Unknown"
    assert message == f"unknown phase {phase or 'nil'}: something"


def test_every_answer_is_an_argo_cd_health_status(
    health: Callable[[dict[str, Any]], tuple[str, str]],
) -> None:
    for phase, reason, _ in PHASES:
        assert health(rollout(status_of(phase, reason, "m")))[0] in ARGO_HEALTH


def test_the_configmap_patch_holds_exactly_the_scripts() -> None:
    patch = PATCH.read_text()
    assert patch == render_from_files(), (
        "argocd-cm-patch.yaml is out of date: run `python tests/unit/test_argocd_health.py`"
    )
    loaded = yaml.safe_load(patch)
    assert (loaded["kind"], loaded["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert set(loaded["data"]) == {HEALTH_KEY, ACTIONS_KEY}
    assert loaded["data"][HEALTH_KEY] == SCRIPT.read_text()
    # Argo CD reads the actions value as YAML: discovery.lua, definitions (name, action.lua), nothing else.
    actions = yaml.safe_load(loaded["data"][ACTIONS_KEY])
    assert set(actions) == {"discovery.lua", "definitions"}
    assert actions["discovery.lua"] == (ACTIONS / "discovery.lua").read_text()
    assert [(d["name"], d["action.lua"]) for d in actions["definitions"]] == [
        (name, (ACTIONS / f"{name}.lua").read_text()) for name in ACTION_NAMES
    ]


def test_the_actions_are_the_operators() -> None:
    assert set(ACTION_NAMES) == {action.value for action in Action}
    assert {path.stem for path in ACTIONS.glob("*.lua")} == {*ACTION_NAMES, "discovery"}


def test_the_application_snippet_ignores_only_virtual_service_weights() -> None:
    application = yaml.safe_load(SNIPPET.read_text())
    assert application["kind"] == "Application"
    ignores = application["spec"]["ignoreDifferences"]
    assert ignores == [
        {
            "group": "networking.istio.io",
            "kind": "VirtualService",
            "jqPathExpressions": [".spec.http[]?.route[]?.weight"],
        }
    ]
    assert "ApplyOutOfSyncOnly=true" in application["spec"]["syncPolicy"]["syncOptions"]


if __name__ == "__main__":
    PATCH.write_text(render_from_files())
    print(f"wrote {PATCH.relative_to(ROOT)}", file=sys.stderr)
