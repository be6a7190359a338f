"""Built-in benchmarks by name, and loading a benchmark from a name or a spec path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from relbench.benchmark import Benchmark
from relbench.errors import UnknownNameError
from relbench.registry import Registry

# name -> spec file inside the relbench.benchmark_data package
BUILTIN: dict[str, str] = {
    "demo": "demo/benchmark.yaml",
    "relationbench": "relationbench/benchmark.yaml",
}

BENCHMARKS: Registry[str] = Registry("benchmark")
for _name, _file in BUILTIN.items():
    BENCHMARKS.register(_name, "relbench.benchmarks:BUILTIN", spec=_file)


def builtin_spec_path(name: str) -> Path:
    entry = BENCHMARKS.entry(name)  # raises with suggestions for unknown names
    return Path(str(resources.files("relbench.benchmark_data").joinpath(entry.meta["spec"])))


def spec_path_for(name_or_path: str) -> Path:
    """A built-in name, or a path to a spec file."""
    if name_or_path in BENCHMARKS:
        return builtin_spec_path(name_or_path)
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        return path
    raise UnknownNameError(BENCHMARKS.unknown_message(name_or_path) + " (or give a path to a .yaml/.json spec)")


def load_benchmark(name_or_path: str) -> Benchmark:
    from relbench.spec import load_spec

    return load_spec(spec_path_for(name_or_path))
