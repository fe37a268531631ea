"""The GitOps readers, a small Go program of ours (`gomod/gitops`): kstatus from sigs.k8s.io/cli-utils (how
Flux reads a resource's health) and Argo CD's Lua runtime, gopher-lua, for health, action and discovery
scripts. Built once with the machine's Go and cached like the control plane's binaries.

The cache directory is named after a hash of the module (go.mod, go.sum and main.go), so an edit to the
program or a new pin builds once, beside the old build.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrollout_dev.devenv.binaries import (
    GOMOD_DIR,
    BinariesError,
    GoBuild,
    _file_lock,
    cache_root,
    run_build,
)

MODULE_DIR = GOMOD_DIR / "gitops"
SOURCES = ("go.mod", "go.sum", "main.go")
NAME = "gitops"


def module_hash() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (MODULE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def gitops_build(root: Path | None = None) -> GoBuild:
    root = root or cache_root()
    return GoBuild(
        module_dir=MODULE_DIR,
        packages=(".",),
        outputs=(NAME,),
        target_dir=root / "bin" / f"{NAME}-{module_hash()}",
        tags="",
        ldflags="-s -w",
        sources=SOURCES,
    )


def ensure_gitops_tool(log: Callable[[str], None] = print, root: Path | None = None) -> Path:
    """The built program's path; built first if it is not cached. A failed build raises BinariesError with
    the compiler's output."""
    root = root or cache_root()
    build = gitops_build(root)
    with _file_lock(root / "bin" / ".lock"):
        if not build.is_cached():
            run_build(build, log)
    return build.target_dir / NAME


class GitopsToolError(RuntimeError):
    """The program refused the input or the script failed; the message is its standard error."""


@dataclass(frozen=True)
class GitopsTool:
    """Runs the program on one object (a dict as read from the API server) and returns its JSON answer."""

    path: Path

    def _run(self, *args: str, obj: dict[str, Any]) -> Any:
        done = subprocess.run(
            [str(self.path), *args, "-"],
            input=json.dumps(obj),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise GitopsToolError(f"{self.path.name} {' '.join(args)}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def kstatus(self, obj: dict[str, Any]) -> tuple[str, str]:
        """(status, message) of sigs.k8s.io/cli-utils' kstatus: InProgress, Current, Failed, ..."""
        result = self._run("kstatus", obj=obj)
        return str(result["status"]), str(result["message"])

    def argocd_health(self, script: Path, obj: dict[str, Any]) -> tuple[str, str]:
        """(status, message) of an Argo CD health script."""
        result = self._run("argocd-health", "-script", str(script), obj=obj)
        return str(result["status"]), str(result["message"])

    def argocd_action(self, script: Path, obj: dict[str, Any]) -> dict[str, Any]:
        """The object an Argo CD resource action script returns."""
        result: dict[str, Any] = self._run("argocd-action", "-script", str(script), obj=obj)
        return result

    def argocd_action_patch(self, script: Path, obj: dict[str, Any]) -> dict[str, Any]:
        """The JSON merge patch from `obj` to what the action returns: what Argo CD sends."""
        result: dict[str, Any] = self._run("argocd-action", "-script", str(script), "-merge-patch", obj=obj)
        return result

    def argocd_discovery(self, script: Path, obj: dict[str, Any]) -> dict[str, bool]:
        """Action name -> disabled, from an Argo CD action discovery script."""
        result = self._run("argocd-discovery", "-script", str(script), obj=obj)
        return {str(action["name"]): bool(action["disabled"]) for action in result}


def gitops_tool(log: Callable[[str], None] = print) -> GitopsTool:
    try:
        return GitopsTool(ensure_gitops_tool(log))
    except OSError as error:
        raise BinariesError(f"could not build the GitOps readers from {MODULE_DIR}: {error}") from error
