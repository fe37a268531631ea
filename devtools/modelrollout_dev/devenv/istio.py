"""Istio's CustomResourceDefinitions, taken from the `istio.io/api` Go module pinned in `gomod/istio`.

The file is Istio's own generated `kubernetes/customresourcedefinitions.gen.yaml` (VirtualService,
DestinationRule and the rest, every served version with its schema), so every VirtualService the operator
writes is validated by the API server exactly as in a mesh. It is downloaded through the Go module proxy,
checked against go.sum, and cached; it is never written by hand nor committed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from modelrollout_dev.devenv.binaries import GOMOD_DIR, cache_root, downloaded_module, pinned_version
from modelrollout_dev.devenv.established import wait_established

CRD_FILE = "kubernetes/customresourcedefinitions.gen.yaml"
NETWORKING_CRDS = ("virtualservices.networking.istio.io", "destinationrules.networking.istio.io")


def istio_api_version() -> str:
    return pinned_version(GOMOD_DIR / "istio", "istio.io/api")


def istio_crds_path(root: Path | None = None) -> Path:
    """The CRD file of the pinned istio.io/api, fetched once into the cache."""
    version = istio_api_version()
    cached = (root or cache_root()) / f"istio-api-{version}" / "customresourcedefinitions.gen.yaml"
    if cached.exists():
        return cached
    module_dir = downloaded_module("istio.io/api", GOMOD_DIR / "istio")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    shutil.copyfile(module_dir / CRD_FILE, tmp)
    tmp.replace(cached)
    return cached


def install_istio_crds(kubectl: Path, kubeconfig: Path, timeout_seconds: int = 60) -> Path:
    """Apply the CRDs (server-side: they are too large for the last-applied annotation) and wait until
    the API server serves them."""
    crds = istio_crds_path()
    base = [str(kubectl), f"--kubeconfig={kubeconfig}"]
    argv = [*base, "apply", "--server-side", "--field-manager=modelrollout-dev", "-f", str(crds)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        result = wait_established(base, crds, timeout_seconds)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(result.args[2:])}` failed:\n{result.stdout}{result.stderr}")
    return crds
