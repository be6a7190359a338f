"""The generic lazy registry and the packaging that maps the user's layout into relbench.*."""

from __future__ import annotations

import subprocess
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


# ------------------------------------------------------------------------------------------
# Plugins: one info object per method or metric, read by listings and by the class


PLUGIN_MODULE = '''
from relbench.metrics.base import Metric
from relbench.plugins import MetricInfo

INFO = MetricInfo(name="widget", target="{module}:Widget", summary="a widget", higher_is_better=False, range=(0.0, 2.0))
OTHER = MetricInfo(name="gadget", target="{module}:Gadget", summary="a gadget", higher_is_better=True, range=(-1.0, 1.0), model="clip")


class Widget(Metric):
    info = INFO

    def settings(self):
        return {{}}

    def score(self, samples):
        return []


class Gadget(Widget):  # wired to the wrong info: its registry entry is OTHER
    pass
'''


def write_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE.format(module=module))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_plugin_infos_are_read_on_first_use_and_give_the_class_its_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, monkeypatch, "plugin_info_mod")
    registry: Registry[type] = Registry("metric")
    registry.add("plugin_info_mod:INFO")
    registry.add("plugin_info_mod:OTHER")
    assert "plugin_info_mod" not in sys.modules  # nothing read before the registry's first use
    entry = registry.entry("widget")
    assert (entry.name, entry.target, entry.summary) == ("widget", "plugin_info_mod:Widget", "a widget")
    assert entry.meta == {"higher_is_better": False, "range": (0.0, 2.0), "profiles": ("tiny", "full")}  # no model key
    assert registry.entry("gadget").meta["model"] == "clip"
    cls = registry.get("widget")
    assert cls.info is entry.info
    assert (cls.name, cls.higher_is_better, cls.value_range, cls.model_key, cls.description) == ("widget", False, (0.0, 2.0), None, "a widget")
    with pytest.raises(ValueError, match="plugin_info_mod:Gadget must set `info` to the registered metric info of 'gadget'"):
        registry.get("gadget")  # Gadget inherits Widget's info: the listing would show other metadata


def test_infos_named_in_the_environment_join_and_leave_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, monkeypatch, "plugin_env_mod")
    registry: Registry[type] = Registry("metric", env="RELBENCH_TEST_METRICS")
    registry.register("builtin", "os:path")
    monkeypatch.setenv("RELBENCH_TEST_METRICS", "plugin_env_mod:INFO, plugin_env_mod:OTHER")
    assert registry.names() == ["builtin", "gadget", "widget"]
    monkeypatch.setenv("RELBENCH_TEST_METRICS", "plugin_env_mod:OTHER")
    assert registry.names() == ["builtin", "gadget"]
    monkeypatch.delenv("RELBENCH_TEST_METRICS")
    assert registry.names() == ["builtin"]


@pytest.mark.parametrize(("value", "message"), [
    ("plugin_missing_mod:INFO", "$RELBENCH_TEST_METRICS: cannot read metric info 'plugin_missing_mod:INFO': No module named 'plugin_missing_mod'"),
    ("plugin_bad_mod:NOPE", "$RELBENCH_TEST_METRICS: cannot read metric info 'plugin_bad_mod:NOPE': module 'plugin_bad_mod' has no attribute 'NOPE'"),
    ("plugin_bad_mod", "$RELBENCH_TEST_METRICS: metric info must look like 'module:ATTR', got 'plugin_bad_mod'"),
    ("plugin_bad_mod:Widget", "$RELBENCH_TEST_METRICS: plugin_bad_mod:Widget is not a metric info (relbench.plugins), got ABCMeta"),
    ("plugin_bad_mod:INFO,plugin_bad_mod:INFO", "$RELBENCH_TEST_METRICS: metric 'widget' is already registered (plugin_bad_mod:Widget)"),
])
def test_bad_plugin_names_in_the_environment_are_one_line_errors(value: str, message: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, monkeypatch, "plugin_bad_mod")
    registry: Registry[type] = Registry("metric", env="RELBENCH_TEST_METRICS")
    monkeypatch.setenv("RELBENCH_TEST_METRICS", value)
    with pytest.raises(RelbenchError) as info:
        registry.names()
    assert str(info.value) == message


def test_infos_refuse_malformed_metadata() -> None:
    from relbench.plugins import MethodInfo, MetricInfo

    with pytest.raises(ValueError, match="target must look like 'module:Class'"):
        MethodInfo(name="m", target="mod.Class", summary="")
    with pytest.raises(ValueError, match=r"profiles must be some of tiny, full, got \('huge',\)"):
        MethodInfo(name="m", target="mod:Class", summary="", profiles=("huge",))
    with pytest.raises(ValueError, match=r"range must be \(low, high\) with low < high, got \(1.0, 1.0\)"):
        MetricInfo(name="x", target="mod:X", summary="", higher_is_better=True, range=(1.0, 1.0))


def test_listing_reads_every_plugin_info_without_torch() -> None:
    code = (
        "import sys\n"
        "from relbench.methods import METHODS\nfrom relbench.metrics import METRICS\n"
        "infos = [e.info for registry in (METHODS, METRICS) for e in registry.entries()]\n"
        "assert all(info is not None for info in infos) and len(infos) >= 24, len(infos)\n"
        "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_class_exposes_exactly_its_registry_metadata() -> None:
    """One source: each registered class carries the very info its listing shows, and its
    attributes are that info's."""
    from relbench.methods import METHODS
    from relbench.metrics import METRICS

    for registry in (METHODS, METRICS):
        for entry in registry.entries():
            cls = registry.get(entry.name)
            assert cls.info is entry.info, entry.name
            assert entry.meta == entry.info.meta() and entry.summary == entry.info.summary
            for attr, value in entry.info.class_attributes().items():
                assert getattr(cls, attr) == value, (entry.name, attr)
    # What the class previously declared and the registry repeated, pinned.
    assert (METRICS.get("clip_t").higher_is_better, METRICS.get("clip_t").value_range) == (True, (-100.0, 100.0))
    assert (METRICS.get("confusion").higher_is_better, METRICS.get("confusion").value_range) == (False, (0.0, 200.0))
    assert METRICS.get("relation_mc").model_key == "judge" and METRICS.get("presence").value_range == (0.0, 1.0)
    assert METHODS.entry("dreamrelation").meta["requires"] == ("loras",) and METHODS.get("dreamrelation").name == "dreamrelation"
    trainers = {e.name: e.meta["trainer"] for e in METHODS.entries() if e.meta["trains"]}
    assert trainers == {
        "dreamrelation": "relbench.methods.dreamrelation.train", "reversion": "relbench.methods.reversion.train",
        "dreambooth-lora": "relbench.methods.dreambooth_lora.train", "custom-diffusion": "relbench.methods.custom_diffusion.train",
    }
