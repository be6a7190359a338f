"""``relbench sweep <sweep.yaml>``: a grid of evaluation runs that share one output tree.

A sweep file::

    output: runs/sweep-hug            # every run goes below this folder
    profile: full                     # tiny | full
    benchmarks: [relationbench]       # names or spec paths
    seeds: [0, 1, 2, 3]
    metrics: [clip_t, clip_i, dino, relation_vqa]   # optional (default: every metric of the profile)
    relations: [hug]                  # optional case filter; limit: N also accepted
    resolution: 1024                  # optional
    models: {clip: /models/clip-vit-large-patch14}  # optional --model overrides
    methods:
      - method: sdxl
      - method: ms-diffusion
        grid: {scale: [0.4, 0.6, 0.8]}
      - method: dreamrelation
        set: {lora_scale: 1.0}
        grid: {loras: ["hug=ckpt/hug-250", "hug=ckpt/hug-500"]}

expands to one run per (benchmark, method, point of the method's grid): ``set`` holds settings
fixed for the method, ``grid`` the settings swept (their Cartesian product). Each run is an
ordinary ``relbench evaluate`` into ``<output>/<benchmark>/<method>[-<k>]`` (``k`` numbers the grid
points; ``<benchmark>`` is ``NAME@VERSION`` where the sweep names a built-in's version), so it
resumes as any run does; a multi-process launch shards every run over the processes.
``--dry-run`` prints the plan and its size without loading any model.

``launcher: local | slurm`` (or ``--launcher``), ``max_parallel: N`` (local) and a ``slurm:``
section say where the runs go: ``relbench.sweep_launch``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError
from relbench.options import check_resolution, check_seeds, size_multiple
from relbench.registry import did_you_mean

TOP_KEYS = {"output", "profile", "benchmarks", "seeds", "metrics", "relations", "limit", "resolution", "models", "methods", "device",
            "embedder_dtype", "launcher", "max_parallel", "slurm"}
METHOD_KEYS = {"method", "set", "grid"}


@dataclass(frozen=True)
class PlannedRun:
    benchmark: str  # as the sweep names it: a built-in name or a spec path
    method: str
    settings: dict[str, str]  # method setting -> value, as --set gives them
    output: Path
    n_cases: int
    n_seeds: int

    @property
    def n_images(self) -> int:
        return self.n_cases * self.n_seeds

    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items())) or "defaults"
        return f"{self.benchmark} / {self.method} ({shown})"


@dataclass
class Sweep:
    path: Path
    output: Path
    profile: str
    benchmarks: list[str]
    seeds: list[int]
    metrics: list[str] | None
    relations: list[str] | None
    limit: int | None
    resolution: int | None
    models: dict[str, str]
    device: str
    methods: list[dict[str, Any]] = field(default_factory=list)
    launcher: str = "local"  # relbench.sweep_launch.LAUNCHERS
    max_parallel: int = 1  # local launcher: jobs at once
    slurm: Any = None  # relbench.sweep_launch.SlurmSettings
    embedder_dtype: str | None = None  # as --embedder-dtype


def load_sweep(path: Path) -> Sweep:
    from relbench.spec import read_spec_file

    data = read_spec_file(path)
    where = str(path)
    if not isinstance(data, dict):
        raise RelbenchError(f"{where}: expected a mapping with output, benchmarks, seeds, methods")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise RelbenchError(f"{where}: {unknown[0]}: unknown key.{did_you_mean(unknown[0], sorted(TOP_KEYS))} "
                            f"Expected some of: {', '.join(sorted(TOP_KEYS))}")
    for key in ("output", "benchmarks", "methods"):
        if key not in data:
            raise RelbenchError(f"{where}: {key}: missing")
    benchmarks = _str_list(data["benchmarks"], f"{where}: benchmarks")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise RelbenchError(f"{where}: seeds: expected a non-empty list of integers, got {seeds!r}")
    check_seeds(seeds, f"{where}: seeds")
    methods = data["methods"]
    if not isinstance(methods, list) or not methods:
        raise RelbenchError(f"{where}: methods: expected a non-empty list of {{method, set, grid}}")
    for i, entry in enumerate(methods):
        at = f"{where}: methods[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
            raise RelbenchError(f"{at}: expected a mapping with a 'method' name")
        unknown = sorted(set(entry) - METHOD_KEYS)
        if unknown:
            raise RelbenchError(f"{at}: {unknown[0]}: unknown key.{did_you_mean(unknown[0], sorted(METHOD_KEYS))} "
                                "Expected some of: method, set, grid")
        for key in ("set", "grid"):
            if not isinstance(entry.get(key, {}), dict):
                raise RelbenchError(f"{at}.{key}: expected a mapping of setting -> value")
        for name, values in entry.get("grid", {}).items():
            if not isinstance(values, list) or not values:
                raise RelbenchError(f"{at}.grid.{name}: expected a non-empty list of values")
    models = data.get("models", {}) or {}
    if not isinstance(models, dict):
        raise RelbenchError(f"{where}: models: expected a mapping KEY: hub id or path")
    output = Path(str(data["output"])).expanduser()
    if not output.is_absolute():
        output = path.parent / output
    launch = _launch_settings(data, where)
    embedder_dtype = data.get("embedder_dtype")
    if embedder_dtype is not None:
        from relbench.profiles import check_precision

        embedder_dtype = check_precision(str(embedder_dtype), f"{where}: embedder_dtype")
    return Sweep(
        path=path, output=output, profile=str(data.get("profile", "tiny")), benchmarks=benchmarks, seeds=list(seeds),
        metrics=_str_list(data["metrics"], f"{where}: metrics") if data.get("metrics") is not None else None,
        relations=_str_list(data["relations"], f"{where}: relations") if data.get("relations") is not None else None,
        limit=data.get("limit"), resolution=data.get("resolution"), models={str(k): str(v) for k, v in models.items()},
        device=str(data.get("device", "auto")), methods=methods, embedder_dtype=embedder_dtype, **launch,
    )


def _launch_settings(data: dict[str, Any], where: str) -> dict[str, Any]:
    """launcher, max_parallel and slurm (``relbench.sweep_launch``), checked."""
    from relbench.sweep_launch import LAUNCHERS, parse_slurm

    launcher = data.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise RelbenchError(f"{where}: launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    max_parallel = data.get("max_parallel", 1)
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise RelbenchError(f"{where}: max_parallel: expected an integer >= 1, got {max_parallel!r}")
    return {"launcher": launcher, "max_parallel": max_parallel, "slurm": parse_slurm(data.get("slurm"), f"{where}: slurm")}


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RelbenchError(f"{where}: expected a non-empty list of names, got {value!r}")
    return list(value)


def _as_setting(value: Any) -> str:
    """A YAML value as the string ``--set`` would give (lists and mappings as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def plan(sweep: Sweep) -> list[PlannedRun]:
    """Every run of the sweep, validated (names, settings, cases) without loading a model."""
    from relbench.benchmarks import is_builtin, load_benchmark
    from relbench.methods import METHODS
    from relbench.profiles import RunContext, check_model_keys
    from relbench.runner import DEFAULT_RESOLUTION, select_cases

    context = RunContext(profile=sweep.profile, device="cpu")
    check_model_keys(sweep.models, f"{sweep.path}: models:")  # before any run (the device is checked as each starts)
    runs: list[PlannedRun] = []
    for benchmark_name in sweep.benchmarks:
        benchmark = load_benchmark(benchmark_name)
        cases = select_cases(benchmark, sweep.relations, sweep.limit)
        # A version named in the sweep (relationbench@1) names the folder too, so two versions of
        # one benchmark can share a sweep; a plain name keeps the folder it always had.
        label = benchmark.name + (f"@{benchmark.version}" if "@" in benchmark_name and is_builtin(benchmark_name) else "")
        for entry in sweep.methods:
            name = entry["method"]
            cls = METHODS.get(name)
            size = DEFAULT_RESOLUTION[sweep.profile] if sweep.resolution is None else sweep.resolution
            check_resolution(size, size_multiple([cls.resolution_multiple]), f"{sweep.path}: resolution")
            fixed = {k: _as_setting(v) for k, v in entry.get("set", {}).items()}
            grid = entry.get("grid", {})
            keys = sorted(grid)
            points = list(itertools.product(*(grid[k] for k in keys))) or [()]
            for index, point in enumerate(points):
                settings = {**fixed, **{k: _as_setting(v) for k, v in zip(keys, point)}}
                cls.settings_from_overrides(context, settings)  # unknown or mistyped settings fail now
                suffix = f"-{index}" if len(points) > 1 else ""
                runs.append(PlannedRun(benchmark_name, name, settings, sweep.output / label / f"{name}{suffix}", len(cases), len(sweep.seeds)))
    outputs = [r.output for r in runs]
    if len(set(outputs)) != len(outputs):
        raise RelbenchError(f"{sweep.path}: two runs would share an output folder; list each method once per benchmark")
    return runs


def run_sweep(sweep: Sweep, runs: list[PlannedRun], progress: bool = True) -> list[Any]:
    from relbench.runner import evaluate

    try:  # before the first run, not when a later one (hours in) would find out
        sweep.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RelbenchError(f"{sweep.path}: output: cannot create {sweep.output}: {exc.strerror or exc}") from exc
    summaries = []
    for run in runs:
        summaries.append(evaluate(evaluate_options(sweep, run, progress)))
    return summaries


def evaluate_options(sweep: Sweep, run: PlannedRun, progress: bool = False) -> Any:
    """The ``relbench evaluate`` of one grid point (an ``EvaluateOptions``)."""
    from relbench.runner import EvaluateOptions

    return EvaluateOptions(
        benchmark=run.benchmark, output=run.output, methods=[run.method], metrics=sweep.metrics, profile=sweep.profile,
        seeds=tuple(sweep.seeds), resolution=sweep.resolution, device=sweep.device, model_overrides=dict(sweep.models),
        method_overrides={run.method: dict(run.settings)} if run.settings else {}, limit=sweep.limit,
        relations=sweep.relations, progress=progress, embedder_dtype=sweep.embedder_dtype,
    )
