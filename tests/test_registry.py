"""The generic lazy registry and the packaging that maps the user's layout into relbench.*."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from relbench.errors import RelbenchError, UnknownNameError
from relbench.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def test_entries_are_imported_only_when_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "lazy_target_mod.py").write_text("class Thing:\n    value = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[type] = Registry("widget")
    registry.register("thing", "lazy_target_mod:Thing", summary="a thing", colour="red")
    assert "lazy_target_mod" not in sys.modules
    assert registry.entry("thing").meta == {"colour": "red"}
    assert registry.names() == ["thing"] and "thing" in registry
    assert "lazy_target_mod" not in sys.modules
    assert registry.get("thing").value == 42
    assert "lazy_target_mod" in sys.modules


def test_unknown_names_suggest_close_matches_and_list_all() -> None:
    registry: Registry[object] = Registry("method")
    for name in ("dreamrelation", "ms-diffusion", "sdxl"):
        registry.register(name, "os:path")
    with pytest.raises(UnknownNameError) as info:
        registry.get("dream-relation")
    assert str(info.value) == (
        "unknown method 'dream-relation'. Did you mean 'dreamrelation'? Available: dreamrelation, ms-diffusion, sdxl"
    )
    with pytest.raises(UnknownNameError) as info:
        registry.entry("zzz")
    assert str(info.value) == "unknown method 'zzz'. Available: dreamrelation, ms-diffusion, sdxl"


def test_duplicates_bad_targets_and_missing_packages() -> None:
    registry: Registry[object] = Registry("metric")
    registry.register("a", "os:path")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", "os:sep")
    with pytest.raises(ValueError, match="module:attr"):
        registry.register("b", "os.path")
    registry.register("c", "relbench_no_such_module:Thing")
    with pytest.raises(RelbenchError, match="metric 'c' needs a package that is not installed"):
        registry.get("c")


def test_objects_can_be_registered_directly() -> None:
    registry: Registry[type] = Registry("method")
    registry.register("dict", dict, summary="builtin")
    assert registry.get("dict") is dict and registry.entry("dict").target == "builtins:dict"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A method folder missing from pyproject would be absent from a non-editable install."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = config["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed
