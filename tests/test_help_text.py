"""Help a newcomer can read: placeholders named, not Python types; choices listed; sweep keys and
method settings with "did you mean"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

import cli
from relbench.errors import RelbenchError
from relbench.sweep import load_sweep, plan

# What Typer shows when nothing else is given: a Python type (`<list[str]>`, `<int>`, `<path>`)
# or a required argument in braces (`{method}`).
PYTHON_PLACEHOLDER = re.compile(r"<(?:str|int|float|bool|path|list\[[^\]]*\]|tuple\[[^\]]*\])>|\{[a-z_]+\}", re.IGNORECASE)


def command_paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [path]
    return [p for name, sub in subcommands.items() for p in command_paths(sub, (*path, name))]


def help_of(*path: str) -> str:
    result = CliRunner().invoke(cli.app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_no_command_shows_python_types_as_placeholders() -> None:
    paths = command_paths(typer.main.get_command(cli.app))
    assert ("evaluate",) in paths and ("data", "validate") in paths
    shown = {" ".join(path): PYTHON_PLACEHOLDER.findall(help_of(*path)) for path in paths}
    assert {name: found for name, found in shown.items() if found} == {}
    assert "Usage: relbench train [OPTIONS] METHOD" in help_of("train")
    assert "Usage: relbench report [OPTIONS] RUN_DIRS..." in help_of("report")
    assert "-m, --method METHOD" in help_of("evaluate")


@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_profile_stage_and_device_list_their_choices(command: str) -> None:
    text = help_of(command)
    assert "--profile tiny|full" in text
    assert "--device auto|cpu|cuda|cuda:N|mps" in text
    if command == "evaluate":
        assert "--stage all|generate|score" in text


def write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": [0]}, "seed: unknown key. Did you mean 'seeds'? Expected some of: "),
        ({"relation": ["hug"]}, "relation: unknown key. Did you mean 'relations', 'resolution'?"),
        ({"methods": [{"method": "sdxl", "grids": {"guidance_scale": [5]}}]}, r"methods\[0\]: grids: unknown key. Did you mean 'grid'?"),
        ({"methods": [{"method": "sdxl", "grid": {"guidance_scal": [5]}}]},
         "--set sdxl.guidance_scal: unknown setting. Did you mean 'guidance_scale'? Expected one of "),
    ],
)
def test_sweep_keys_and_settings_suggest_the_name_meant(tmp_path: Path, change: dict, message: str) -> None:
    sweep = {"output": "out", "profile": "tiny", "benchmarks": ["demo"], "methods": [{"method": "sdxl"}], **change}
    with pytest.raises(RelbenchError, match=re.escape(message) if "[" not in message else message):
        plan(load_sweep(write(tmp_path, sweep)))
