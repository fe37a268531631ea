"""`kubectl modelrollout` against the real operator, API server and Prometheus: a manual gate driven end to
end with the plugin, called in-process (`plugin.main`) with the session's kubeconfig.

With MODELROLLOUT_WRITE_EXAMPLES=1 the test also saves the status screen it saw to
docs/plugin-status-example.txt."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from modelrollout import plugin
from modelrollout.kube import ACTION_ANNOTATION
from modelrollout_dev.browser import rendered_dom, screenshot
from modelrollout_dev.devenv.environment import EnvironmentState
from scenario_support import Rollout

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("modelrollout_crd")]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "plugin-status-example.txt"


class Tables(HTMLParser):
    """Each table of a page by id: rows of (text, class) cells, the header row first."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[tuple[str, str]]]] = {}
        self._table: str | None = None
        self._cell: tuple[list[str], str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._table = found.get("id") or ""
            self.rows[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.rows[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = ([], found.get("class") or "")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[0].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.rows[self._table][-1].append(("".join(self._cell[0]).strip(), self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._table = None


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = plugin.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_manual_gate_driven_with_the_plugin(
    rollout: Rollout, env_state: EnvironmentState, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    where = ["--kubeconfig", env_state.kubeconfig, "-n", rollout.namespace]
    rollout.create(stages=[{"weight": 10, "duration": "5s", "approval": "Manual"}, {"weight": 100}])
    rollout.wait_phase("Progressing")

    # retry only restarts a rolled-back or aborted rollout: refused, and nothing is sent
    code, out, err = run(capsys, "retry", "chat", *where)
    assert (code, out) == (1, "")
    assert err == (
        'error: cannot retry modelrollout "chat": retry restarts an aborted or rolled-back rollout, '
        "this one is Progressing\n"
    )
    assert ACTION_ANNOTATION not in (rollout.get()["metadata"].get("annotations") or {})

    rollout.wait_status("awaiting approval", lambda s: s.get("reason") == "AwaitingApproval", timeout=30)
    code, out, err = run(capsys, "resume", "chat", *where)
    assert (code, err) == (1, 'error: cannot resume modelrollout "chat": nothing is on hold\n')

    code, listed, err = run(capsys, "list", *where)
    assert (code, err) == (0, "")
    header, row = listed.splitlines()
    assert header.split() == ["NAME", "PHASE", "STAGE", "WEIGHT", "VERDICT", "AGE", "MESSAGE"]
    assert row.split()[:5] == ["chat", "Paused", "1/2", "10%", "Pass"]
    code, listed, err = run(capsys, "list", "-A", "--kubeconfig", env_state.kubeconfig)
    assert (code, err) == (0, "")
    assert listed.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [rollout.namespace, "chat", "Paused"] in [line.split()[:3] for line in listed.splitlines()]

    code, screen, err = run(capsys, "status", "chat", *where)
    assert (code, err) == (0, "")
    if os.environ.get("MODELROLLOUT_WRITE_EXAMPLES") == "1":
        EXAMPLE.write_text(screen)
    lines = screen.splitlines()
    assert "Phase:        Paused (AwaitingApproval)" in lines
    assert "Stable:       gpt-4o -> llm-gpt4o" in lines
    assert "Canary:       claude-opus-4-8 -> llm-claude" in lines
    assert "Traffic:      canary 10%, stable 90% (status); VirtualService llm: canary 10% live" in lines
    stages = lines[lines.index("Stages:") + 1 : lines.index("Stages:") + 4]
    assert stages[0].split() == ["#", "WEIGHT", "DURATION", "APPROVAL", "STATE"]
    assert stages[1].split()[:5] == [">", "1", "10%", "5s", "Manual"]
    assert "awaiting approval" in stages[1]
    assert stages[2].split() == ["2", "100%", "-", "Auto"]
    gates = {
        line.split()[0]: line.split() for line in lines if line.startswith(("  error-rate", "  p99-latency"))
    }
    assert gates["error-rate"][2:7] == ["-", "-", "<=", "0.02", "Pass"]  # no stable: not a comparing gate
    assert gates["p99-latency-ms"][2:7] == ["-", "-", "<=", "1000", "Pass"]
    assert float(gates["error-rate"][1]) <= 0.02
    assert "Actions:      promote, promote --full, abort (kubectl modelrollout ACTION chat)" in lines
    events = lines[next(i for i, line in enumerate(lines) if line.startswith("Events")) :]
    assert events[1].split() == ["AGE", "TYPE", "REASON", "MESSAGE"]
    reasons = [line.split()[2] for line in events[2:] if line.strip()]
    assert reasons.index("RolloutStarted") < reasons.index("AwaitingApproval")  # oldest first
    for line in events[2:]:
        if line.strip():  # the Event's time read from its RFC 3339 timestamp
            assert re.fullmatch(r"\d+[smhd]", line.split()[0]), line

    # promote: accepted, sent, and the operator's result reported
    code, out, err = run(capsys, "promote", "chat", *where)
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r'modelrollout "chat" promote: advanced to stage 2/2 \(phase (Progressing|Promoted), stage 2/2\)\n',
        out,
    ), out
    assert ACTION_ANNOTATION not in (rollout.get()["metadata"].get("annotations") or {})
    assert rollout.status()["lastAction"]["action"] == "promote"

    # the rollout advances: --watch redraws until the phase is terminal, then returns
    code, frames, err = run(capsys, "status", "chat", *where, "--watch", "--interval", "0.2")
    assert (code, err) == (0, "")
    last_frame = frames.split("-" * 40 + "\n")[-2]
    assert "Phase:        Promoted (Promoted)" in last_frame
    assert rollout.weights() == (0, 100)

    code, out, err = run(capsys, "promote", "chat", *where)
    assert (code, out) == (1, "")
    assert err == (
        'error: cannot promote modelrollout "chat": the rollout is Promoted: the canary already serves 100%\n'
    )

    # the decision report: each stage as the operator recorded it, read from the live object
    code, out, err = run(capsys, "report", "chat", *where)
    assert (code, err) == (0, "")
    rows = out.splitlines()
    header = next(i for i, line in enumerate(rows) if line.startswith("Stage "))
    assert rows[header + 1].split()[:2] == ["1/2", "10%"]
    assert rows[header + 1].endswith("Advanced (Promote)")
    assert rows[header + 2].split()[:2] == ["2/2", "100%"]
    assert rows[header + 2].endswith("Promoted")
    assert any(line.startswith("Decision:     Promoted: promoted: ") for line in rows)
    code, out, err = run(capsys, "report", "chat", *where, "-o", "json")
    assert (code, err) == (0, "")
    stages = json.loads(out)["stages"]
    assert [(s["stage"], s["outcome"]) for s in stages] == [
        ("1/2", "Advanced (Promote)"),
        ("2/2", "Promoted"),
    ]
    assert {g["gate"] for g in stages[0]["gates"]} == {"error-rate", "p99-latency-ms"}

    # ... and as one HTML page, checked as Chromium renders it
    code, page, err = run(capsys, "report", "chat", *where, "-o", "html")
    assert (code, err) == (0, "")
    saved = tmp_path / "report.html"
    saved.write_text(page)
    tables = Tables()
    tables.feed(rendered_dom(saved.as_uri()))
    assert [row[0][0] for row in tables.rows["stages"][1:]] == ["1/2", "2/2"]
    assert [(row[6][0], row[5]) for row in tables.rows["stages"][1:]] == [
        ("Advanced (Promote)", ("Pass", "Pass")),
        ("Promoted", ("Pass", "Pass")),
    ]
    assert {row[5] for row in tables.rows["gates-1"][1:]} == {("Pass: within bounds", "Pass")}
    picture = screenshot(saved.as_uri(), tmp_path / "report.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"the report as Chromium renders it: {picture}")
    assert {row[0][0] for row in tables.rows["gates-1"][1:]} == {"error-rate", "p99-latency-ms"}


def test_abort_without_waiting_then_retry(
    rollout: Rollout, env_state: EnvironmentState, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--kubeconfig", env_state.kubeconfig, "-n", rollout.namespace]
    rollout.create(stages=[{"weight": 10, "duration": "60s"}, {"weight": 100}])
    rollout.wait_phase("Progressing")
    code, out, err = run(capsys, "abort", "chat", "--no-wait", *where)
    assert (code, err) == (0, "")
    assert out == f"modelrollout.modelrollout.io/chat annotated: {ACTION_ANNOTATION}=abort\n"
    rollout.wait_phase("Aborted")
    assert rollout.weights() == (100, 0)
    code, out, err = run(capsys, "retry", "chat", *where)
    assert (code, err) == (0, "")
    assert out.startswith('modelrollout "chat" retry: restarted from stage 1 (phase Progressing, stage 1/2)')


def test_a_missing_rollout_is_an_error(
    namespace: str, env_state: EnvironmentState, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--kubeconfig", env_state.kubeconfig, "-n", namespace]
    for command in (["status", "nope"], ["promote", "nope"], ["abort", "nope"]):
        code, out, err = run(capsys, *command, *where)
        assert (code, out) == (1, "")
        assert err == f'error: modelrollout "nope" not found in namespace "{namespace}"\n'
    code, out, err = run(capsys, "list", *where)
    assert (code, out, err) == (0, "", f"No modelrollouts found in {namespace} namespace.\n")


def test_the_default_namespace_is_the_contexts(
    namespace: str, env_state: EnvironmentState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = yaml.safe_load(Path(env_state.kubeconfig).read_text())
    for context in kubeconfig["contexts"]:
        context["context"]["namespace"] = namespace
    own = tmp_path / "kubeconfig"
    own.write_text(yaml.safe_dump(kubeconfig))
    context = kubeconfig["current-context"]
    for argv in (["--kubeconfig", str(own)], ["--kubeconfig", str(own), "--context", context]):
        code, out, err = run(capsys, "status", "nope", *argv)
        assert (code, out) == (1, "")
        assert err == f'error: modelrollout "nope" not found in namespace "{namespace}"\n'
    code, out, err = run(capsys, "--kubeconfig", str(own), "--context", "elsewhere", "list")
    assert (code, err) == (1, 'error: context "elsewhere" not found in the kubeconfig\n')


def test_a_missing_kubeconfig_or_broken_context_is_an_error(
    env_state: EnvironmentState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent"
    code, out, err = run(capsys, "list", "--kubeconfig", str(missing))
    assert (code, out) == (1, "")
    assert err == f"error: cannot load the kubeconfig: no kubeconfig at {missing}\n"
    kubeconfig = yaml.safe_load(Path(env_state.kubeconfig).read_text())
    kubeconfig["contexts"].append({"name": "orphan", "context": {"cluster": "gone", "user": "nobody"}})
    own = tmp_path / "kubeconfig"
    own.write_text(yaml.safe_dump(kubeconfig))
    code, out, err = run(capsys, "list", "--kubeconfig", str(own), "--context", "orphan")
    assert (code, out) == (1, "")
    assert err == (
        "error: cannot load the kubeconfig: kubeconfig context 'orphan': cluster 'gone' not found\n"
    )


def _pointed_at(env_state: EnvironmentState, tmp_path: Path, server: str) -> Path:
    """The session's kubeconfig (its credentials) with every cluster's server replaced."""
    kubeconfig = yaml.safe_load(Path(env_state.kubeconfig).read_text())
    for cluster in kubeconfig["clusters"]:
        cluster["cluster"]["server"] = server
    own = tmp_path / "kubeconfig"
    own.write_text(yaml.safe_dump(kubeconfig))
    return own


def test_an_unreachable_api_server_is_an_error(
    env_state: EnvironmentState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    own = _pointed_at(env_state, tmp_path, f"https://127.0.0.1:{port}")
    code, out, err = run(capsys, "status", "chat", "--kubeconfig", str(own), "-n", "default")
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot reach the API server: "), err
    assert f"127.0.0.1:{port}" in err, err


def test_a_silent_api_server_times_out(
    env_state: EnvironmentState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        own = _pointed_at(env_state, tmp_path, f"https://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        code, out, err = run(capsys, "list", "--kubeconfig", str(own), "--request-timeout", "0.5")
        took = time.monotonic() - started
    assert (code, out) == (1, "")
    # aiohttp names the stage that timed out (here the TLS handshake: "Connection timeout to host ...").
    assert err.startswith("error: cannot reach the API server: "), err
    assert "timeout" in err.lower() or "no answer within 0.5s" in err, err
    assert took < 5, took
