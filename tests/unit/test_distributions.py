"""What each distribution carries, from wheels built here: the operator's (what `pip install modelrollout`
and the image get) holds the operator only, none of the dev tooling; the dev tooling's (modelrollout-dev,
devtools/) holds its packages, the Go module pins the local environment builds from, and the commands it adds
to `modelrollout`."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVTOOLS = REPO / "devtools"
DEV_PACKAGES = {"devenv", "sim", "demo", "modelrollout_dev"}
# Not sources (.gitignore): git, virtualenvs, caches, build outputs, binaries built by hand, logs.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "bin",
    "*.log",
)
BUILD = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"


def _build_wheel(source: Path, scratch: Path) -> zipfile.ZipFile:
    """Build a wheel of `source` with setuptools, in a copy (a build writes build/ and *.egg-info beside the
    sources, and another session may be using this checkout)."""
    copy = scratch / "src"
    shutil.copytree(source, copy, ignore=NOT_SOURCES)
    out = scratch / "dist"
    out.mkdir()
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=copy, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return zipfile.ZipFile(out / built.stdout.strip().splitlines()[-1])


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info") and n.endswith(name)]
    return wheel.read(path).decode()


def _entry_points(wheel: zipfile.ZipFile) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # keep the names case-sensitive
    parser.read_string(_dist_info(wheel, "entry_points.txt"))
    return {group: dict(parser[group]) for group in parser.sections()}


@pytest.fixture(scope="module")
def operator_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return _build_wheel(REPO, tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def dev_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return _build_wheel(DEVTOOLS, tmp_path_factory.mktemp("devtools"))


def test_operator_wheel_holds_the_operator_package_only(operator_wheel: zipfile.ZipFile) -> None:
    names = operator_wheel.namelist()
    top_level = {PurePosixPath(n).parts[0] for n in names}
    assert top_level == {"modelrollout", "modelrollout-0.1.0.dist-info"}
    dev_parts = sorted(n for n in names if DEV_PACKAGES & set(PurePosixPath(n).parts))
    assert dev_parts == [], "the dev tooling belongs in devtools/"
    data = sorted(n for n in names if n.startswith("modelrollout/") and not n.endswith(".py"))
    assert data == [], "the operator ships no package data (the Go module pins are the dev tooling's)"
    assert "modelrollout/cli.py" in names
    assert "modelrollout/handlers.py" in names


def test_operator_wheel_requires_no_dev_dependency(operator_wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(_dist_info(operator_wheel, "METADATA"))
    requires = metadata.get_all("Requires-Dist") or []
    assert metadata.get_all("Provides-Extra") is None
    assert not [
        r for r in requires if r.split(">")[0].split("=")[0].strip() in {"cryptography", "matplotlib"}
    ]
    assert not [r for r in requires if "extra ==" in r]


def test_operator_wheel_adds_no_command_of_its_own_to_the_dev_group(operator_wheel: zipfile.ZipFile) -> None:
    assert _entry_points(operator_wheel) == {
        "console_scripts": {
            "modelrollout": "modelrollout.cli:main",
            "kubectl-modelrollout": "modelrollout.plugin:main",
        }
    }


def test_dev_wheel_holds_the_dev_tooling_and_the_go_module_pins(dev_wheel: zipfile.ZipFile) -> None:
    names = set(dev_wheel.namelist())
    assert {PurePosixPath(n).parts[0] for n in names} == {
        "modelrollout_dev",
        "modelrollout_dev-0.1.0.dist-info",
    }
    gomod = DEVTOOLS / "modelrollout_dev" / "devenv" / "gomod"
    pins = {path.relative_to(DEVTOOLS).as_posix() for path in gomod.rglob("go.*")}
    # go.mod and go.sum of etcd, flux-kustomize-controller, flux-source-controller, gitops, helm, istio, kube
    assert len(pins) == 14
    assert pins <= names
    assert "modelrollout_dev/devenv/gomod/gitops/main.go" in names  # the GitOps readers build from source
    for module in ("devenv/commands.py", "sim/__main__.py", "demo/runner.py", "local_operator.py"):
        assert f"modelrollout_dev/{module}" in names


def test_dev_wheel_adds_its_commands_and_depends_on_the_operator(dev_wheel: zipfile.ZipFile) -> None:
    assert _entry_points(dev_wheel)["modelrollout.commands"] == {
        "dev": "modelrollout_dev.devenv.commands:add_parser",
        "sim": "modelrollout_dev.sim.__main__:add_parser",
        "demo": "modelrollout_dev.demo.runner:add_parser",
    }
    metadata = Parser().parsestr(_dist_info(dev_wheel, "METADATA"))
    requires = {r.split(";")[0].split(">")[0].strip() for r in metadata.get_all("Requires-Dist") or []}
    assert {"modelrollout", "cryptography", "matplotlib"} <= requires
