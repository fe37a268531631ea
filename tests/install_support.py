"""The Helm chart in tests: helm built from its pinned Go module (cached; the same build `make helm` does) and
`helm template` of the chart as objects."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modelrollout_dev.devenv.binaries import (
    GOMOD_DIR,
    GoBuild,
    _file_lock,
    cache_root,
    pinned_version,
    run_build,
)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "modelrollout-operator"
HELM_MODULE = GOMOD_DIR / "helm"

Manifest = dict[str, Any]


def helm_build(root: Path | None = None) -> GoBuild:
    """helm from the pinned module, with the flags helm's own release builds set (mk/deploy.mk uses the
    same): the version, and a default Capabilities.KubeVersion from the client-go it is built with (unset,
    it is 1.20, below the chart's kubeVersion)."""
    version = pinned_version(HELM_MODULE, "helm.sh/helm/v3")
    kube_minor = pinned_version(HELM_MODULE, "k8s.io/client-go").split(".")[1]
    ldflags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}"]
    ldflags.append("-X helm.sh/helm/v3/internal/version.gitTreeState=clean")
    for package in ("chartutil", "lint/rules"):
        ldflags.append(f"-X helm.sh/helm/v3/pkg/{package}.k8sVersionMajor=1")
        ldflags.append(f"-X helm.sh/helm/v3/pkg/{package}.k8sVersionMinor={kube_minor}")
    return GoBuild(
        module_dir=HELM_MODULE,
        packages=("helm.sh/helm/v3/cmd/helm",),
        outputs=("helm",),
        target_dir=(root or cache_root()) / "bin" / f"helm-{version}",
        tags="",
        ldflags=" ".join(ldflags),
    )


def ensure_helm(log: Callable[[str], None] = print) -> Path:
    """The cached helm, built first if missing. The lock is the one `make helm` takes (flock on the same
    file), so a test session and a make run started together build once."""
    build = helm_build()
    with _file_lock(build.target_dir.parent / ".helm.lock"):
        if not build.is_cached():
            run_build(build, log)
    return build.target_dir / "helm"


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


def render(helm: Path, namespace: str, *args: str, release: str = "modelrollout") -> list[Manifest]:
    """`helm template` of the chart as a list of objects."""
    rendered = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *args)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
