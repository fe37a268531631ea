"""etcd, kube-apiserver and kubectl for the local control plane: taken from KUBEBUILDER_ASSETS, or built once
from their Go modules with the machine's Go and cached by version outside the repository.

The versions are the ones pinned by the wrapper modules in `gomod/` (with their go.sum), so the cache key and
the build always agree. k8s.io/kubernetes cannot be built with `go install pkg@version` because its go.mod
replaces its staging modules with relative paths; the `gomod/kube` wrapper pins those to their releases.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

GOMOD_DIR = Path(__file__).parent / "gomod"
BINARY_NAMES = ("etcd", "kube-apiserver", "kubectl")


class BinariesError(RuntimeError):
    """The binaries could neither be found nor built; the message says why and what to do."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    source: str  # where they came from, for logs and the README's claims


def pinned_version(module_dir: Path, module: str) -> str:
    """The version a wrapper go.mod requires for `module`."""
    text = (module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise BinariesError(f"{module_dir / 'go.mod'} does not require {module}")
    return match.group(1)


def kubernetes_version() -> str:
    return pinned_version(GOMOD_DIR / "kube", "k8s.io/kubernetes")


def etcd_version() -> str:
    return pinned_version(GOMOD_DIR / "etcd", "go.etcd.io/etcd/server/v3")


def cache_root() -> Path:
    if explicit := os.environ.get("MODELROLLOUT_CACHE"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "modelrollout"


def from_kubebuilder_assets(assets: str) -> Binaries:
    directory = Path(assets)
    missing = [name for name in BINARY_NAMES if not os.access(directory / name, os.X_OK)]
    if missing:
        raise BinariesError(
            f"KUBEBUILDER_ASSETS={assets} lacks executable {', '.join(missing)}; "
            "point it at a setup-envtest directory or unset it to build from the Go modules"
        )
    return Binaries(
        etcd=directory / "etcd",
        kube_apiserver=directory / "kube-apiserver",
        kubectl=directory / "kubectl",
        source=f"KUBEBUILDER_ASSETS={assets}",
    )


@dataclass(frozen=True)
class GoBuild:
    """One `go build` of main packages from a wrapper module, into one cache directory."""

    module_dir: Path
    packages: tuple[str, ...]
    outputs: tuple[str, ...]
    target_dir: Path
    tags: str
    ldflags: str
    # What is copied from the wrapper module into the build: its pins, plus any source of ours.
    sources: tuple[str, ...] = ("go.mod", "go.sum")

    def is_cached(self) -> bool:
        return all(os.access(self.target_dir / name, os.X_OK) for name in self.outputs)


def planned_builds(root: Path | None = None) -> list[GoBuild]:
    root = root or cache_root()
    kube = kubernetes_version()
    major, minor = kube.lstrip("v").split(".")[:2]
    # The same version stamps upstream's build sets; /version and `kubectl version` then report the truth.
    kube_ldflags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (
            ("gitVersion", kube),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    etcd = etcd_version()
    return [
        GoBuild(
            module_dir=GOMOD_DIR / "etcd",
            packages=("go.etcd.io/etcd/server/v3",),
            outputs=("etcd",),
            target_dir=root / "bin" / f"etcd-{etcd}",
            tags="",
            ldflags="",
        ),
        GoBuild(
            module_dir=GOMOD_DIR / "kube",
            packages=("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"),
            outputs=("kube-apiserver", "kubectl"),
            target_dir=root / "bin" / f"kubernetes-{kube}",
            tags="selinux,notest",
            ldflags=kube_ldflags,
        ),
    ]


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def go_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"})
    return env


def downloaded_module(module: str, pins: Path) -> Path:
    """The source directory of `module` in the Go module cache, at the version the wrapper module `pins`
    requires, downloaded (and checked against its go.sum) first if needed."""
    go = shutil.which("go")
    version = pinned_version(pins, module)
    if go is None:
        raise BinariesError(f"Go is needed to download {module}@{version}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("go.mod", "go.sum"):
            shutil.copy2(pins / name, Path(scratch) / name)
        result = subprocess.run(
            [go, "mod", "download", "-json", module],
            cwd=scratch,
            env=go_environment(),
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise BinariesError(f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"])


def run_build(build: GoBuild, log: Callable[[str], None]) -> float:
    """Build into a temporary directory, then move into the cache, so a half-built binary is never used."""
    go = shutil.which("go")
    if go is None:
        envtest = " (or set KUBEBUILDER_ASSETS to envtest binaries)"
        raise BinariesError(
            f"Go is needed to build {', '.join(build.outputs)}"
            + (envtest if set(build.outputs) & set(BINARY_NAMES) else "")
        )
    build.target_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=build.target_dir.parent, prefix=".build-") as scratch:
        work = Path(scratch) / "module"
        out = Path(scratch) / "out"
        work.mkdir()
        out.mkdir()
        for name in build.sources:
            shutil.copy2(build.module_dir / name, work / name)
        # `go build -o DIR/` names a binary after its package path, which for etcd is "server"; name it.
        target = str(out / build.outputs[0]) if len(build.packages) == 1 else f"{out}/"
        argv = [go, "build", "-trimpath", "-o", target]
        if build.tags:
            argv += ["-tags", build.tags]
        if build.ldflags:
            argv += ["-ldflags", build.ldflags]
        argv += list(build.packages)
        log(f"building {', '.join(build.outputs)} -> {build.target_dir} (first time only; minutes)")
        result = subprocess.run(
            argv, cwd=work, env=go_environment(), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BinariesError(f"`{' '.join(argv)}` failed:\n{result.stderr[-4000:]}")
        missing = [name for name in build.outputs if not os.access(out / name, os.X_OK)]
        if missing:
            raise BinariesError(f"`{' '.join(argv)}` produced no {', '.join(missing)}")
        if build.target_dir.exists():
            shutil.rmtree(build.target_dir)
        out.rename(build.target_dir)
    elapsed = time.monotonic() - started
    log(f"built {', '.join(build.outputs)} in {elapsed:.0f}s")
    return elapsed


def ensure_built(log: Callable[[str], None] = print, root: Path | None = None) -> Binaries:
    root = root or cache_root()
    builds = planned_builds(root)
    # One lock for the whole cache: two test sessions started together build once, not twice.
    with _file_lock(root / "bin" / ".lock"):
        for build in builds:
            if not build.is_cached():
                run_build(build, log)
    etcd_build, kube_build = builds
    return Binaries(
        etcd=etcd_build.target_dir / "etcd",
        kube_apiserver=kube_build.target_dir / "kube-apiserver",
        kubectl=kube_build.target_dir / "kubectl",
        source=f"built from Go modules, cached in {root / 'bin'}",
    )


def resolve_binaries(log: Callable[[str], None] = print) -> Binaries:
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        return from_kubebuilder_assets(assets)
    return ensure_built(log)
