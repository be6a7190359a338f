"""Built-in benchmarks by name and version, and loading a benchmark from a name or a spec path.

A built-in is named ``NAME`` (its latest version) or ``NAME@VERSION`` (``relationbench@1``). Every
version stays loadable, so a run made on an older version can be resumed or compared; run.json
records the benchmark's name and version (and the spec's sha256), never the name typed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from relbench.benchmark import Benchmark
from relbench.errors import UnknownNameError
from relbench.registry import Registry, unknown_name_message

# name -> version -> spec file inside the relbench.benchmark_data package, oldest first; the plain
# name means the last (latest) version. A spec's own name and version must be these.
BUILTIN: dict[str, dict[str, str]] = {
    "demo": {"1": "demo/benchmark.yaml"},
    "relationbench": {"1": "relationbench/benchmark.yaml", "2": "relationbench/benchmark_v2.yaml"},
}

SPEC_SUFFIXES = (".yaml", ".yml", ".json")

BENCHMARKS: Registry[str] = Registry("benchmark")
for _name, _versions in BUILTIN.items():
    BENCHMARKS.register(_name, "relbench.benchmarks:BUILTIN", versions=dict(_versions))


def builtin_versions(name: str) -> list[str]:
    """The versions of a built-in benchmark, oldest first (unknown names raise with suggestions)."""
    return list(BENCHMARKS.entry(name).meta["versions"])


def resolve_builtin(ref: str) -> tuple[str, str]:
    """``NAME`` or ``NAME@VERSION`` -> (name, version); a plain name is its latest version."""
    name, at, version = ref.partition("@")
    versions = builtin_versions(name)
    if not at:
        return name, versions[-1]
    if version not in versions:
        refs = [f"{name}@{v}" for v in versions]
        raise UnknownNameError(
            unknown_name_message("benchmark version", ref, refs) + f" ({name} alone means {name}@{versions[-1]})"
        )
    return name, version


def is_builtin(name_or_path: str) -> bool:
    """Whether this names a built-in benchmark (any version, known or not) rather than a spec file."""
    if Path(name_or_path).suffix.lower() in SPEC_SUFFIXES:
        return False
    return name_or_path.partition("@")[0] in BENCHMARKS


def builtin_spec_path(ref: str) -> Path:
    name, version = resolve_builtin(ref)
    spec_file = BENCHMARKS.entry(name).meta["versions"][version]
    return Path(str(resources.files("relbench.benchmark_data").joinpath(spec_file)))


def spec_path_for(name_or_path: str) -> Path:
    """A built-in name (``NAME`` or ``NAME@VERSION``), or a path to a spec file."""
    if is_builtin(name_or_path):
        return builtin_spec_path(name_or_path)
    path = Path(name_or_path)
    if path.suffix.lower() in SPEC_SUFFIXES or path.exists():
        return path
    raise UnknownNameError(BENCHMARKS.unknown_message(name_or_path) + " (or give a path to a .yaml/.json spec)")


def load_benchmark(name_or_path: str) -> Benchmark:
    from relbench.spec import load_spec

    return load_spec(spec_path_for(name_or_path))
