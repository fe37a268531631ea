"""Waiting until the API server serves freshly applied CRDs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# What kubectl says when a CRD it waits for has no conditions yet: it fails at once instead of waiting.
NO_CONDITIONS_YET = "status.conditions accessor error"


def wait_established(
    kubectl: Sequence[str], path: Path | str, timeout_seconds: float = 60
) -> subprocess.CompletedProcess[str]:
    """`kubectl wait --for=condition=Established` for the CRDs in `path` (`kubectl`: the command and its
    kubeconfig flag), asked again while the API server has not yet written a new CRD's conditions."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        left = max(1, round(deadline - time.monotonic()))
        argv = [*kubectl, "wait", "--for=condition=Established", f"--timeout={left}s", "-f", str(path)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode == 0 or NO_CONDITIONS_YET not in result.stderr or time.monotonic() >= deadline:
            return result
        time.sleep(0.2)
