"""The runtime CLI and the commands other packages add to it (the dev tooling's `dev`, `sim`, `demo`):
only the command asked for is loaded, and without the dev tooling its commands say where they come from."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from modelrollout import cli


@dataclass
class FakeCommand:
    """Stands for an entry point of the `modelrollout.commands` group."""

    name: str
    loaded: list[str] = field(default_factory=list)

    def load(self) -> object:
        self.loaded.append(self.name)

        def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
            command = subparsers.add_parser(self.name)
            command.set_defaults(handler=lambda _args: 7)

        return add_parser


def _install(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[str]:
    loaded: list[str] = []
    commands = {name: FakeCommand(name, loaded) for name in names}
    monkeypatch.setattr(cli, "installed_commands", lambda: commands)
    return loaded


def test_the_dev_tooling_registers_its_commands() -> None:
    installed = cli.installed_commands()
    assert {name: entry.value for name, entry in installed.items() if name in cli.DEV_TOOLING_COMMANDS} == {
        "dev": "modelrollout_dev.devenv.commands:add_parser",
        "sim": "modelrollout_dev.sim.__main__:add_parser",
        "demo": "modelrollout_dev.demo.runner:add_parser",
    }


@pytest.mark.parametrize("command", ["dev", "sim", "demo"])
def test_installed_command_runs_and_loads_only_itself(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    loaded = _install(monkeypatch, "dev", "sim", "demo")
    assert cli.main([command]) == 7
    assert loaded == [command]


def test_operator_commands_load_no_added_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = _install(monkeypatch, "dev", "sim", "demo")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    assert loaded == []
    assert "--prometheus-url" in capsys.readouterr().out


def test_help_lists_the_added_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = _install(monkeypatch, "dev", "sim", "demo")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert sorted(loaded) == ["demo", "dev", "sim"]
    assert "{crds,run,judge,demo,dev,sim}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["dev", "up"], ["sim", "--port", "0"], ["demo"]])
def test_without_the_dev_tooling_its_commands_say_where_they_come_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _install(monkeypatch)
    assert cli.main(argv) == 2
    message = capsys.readouterr().err
    assert f"`modelrollout {argv[0]}` is dev tooling" in message
    assert "devtools/" in message
    assert "make venv" in message
