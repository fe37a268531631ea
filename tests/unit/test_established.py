"""Waiting for CRDs to be served: kubectl fails at once while a new CRD has no conditions yet."""

from __future__ import annotations

from pathlib import Path

from modelrollout_dev.devenv.established import NO_CONDITIONS_YET, wait_established


def fake_kubectl(tmp_path: Path, failures: int, stderr: str) -> Path:
    """A kubectl that fails `failures` times with `stderr`, then succeeds; it counts its calls."""
    calls = tmp_path / "calls"
    script = tmp_path / "kubectl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo x >> "{calls}"\n'
        f'if [ "$(wc -l < "{calls}")" -le {failures} ]; then echo "error: {stderr}" >&2; exit 1; fi\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return script


def test_a_crd_without_conditions_yet_is_waited_for_again(tmp_path: Path) -> None:
    kubectl = fake_kubectl(tmp_path, 2, f"{NO_CONDITIONS_YET}: <nil> is of the type <nil>")
    result = wait_established([str(kubectl)], tmp_path / "crd.yaml", timeout_seconds=10)
    assert result.returncode == 0
    assert len((tmp_path / "calls").read_text().splitlines()) == 3


def test_any_other_failure_is_returned_at_once(tmp_path: Path) -> None:
    kubectl = fake_kubectl(tmp_path, 5, "the server could not find the requested resource")
    result = wait_established([str(kubectl)], tmp_path / "crd.yaml", timeout_seconds=10)
    assert result.returncode == 1
    assert "could not find" in result.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 1
