"""relbench sweep: grid expansion, dry run, resumable runs in one output tree, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relbench.errors import RelbenchError
from relbench.runstore import read_rows
from relbench.sweep import load_sweep, plan, run_sweep

SWEEP = {
    "output": "out",
    "profile": "tiny",
    "benchmarks": ["demo"],
    "seeds": [0, 1],
    "metrics": ["clip_t"],
    "limit": 2,
    "methods": [
        {"method": "reference-collage", "grid": {"fit": ["contain", "stretch"], "background": [[0, 0, 0], [255, 255, 255]]}},
        {"method": "sdxl", "set": {"num_inference_steps": 1}},
    ],
}


def write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_plan_expands_the_grid_per_method_and_benchmark(tmp_path: Path) -> None:
    runs = plan(load_sweep(write(tmp_path, SWEEP)))
    assert len(runs) == 4 + 1
    collage = [r for r in runs if r.method == "reference-collage"]
    assert {(r.settings["fit"], r.settings["background"]) for r in collage} == {
        (fit, bg) for fit in ("contain", "stretch") for bg in ("[0, 0, 0]", "[255, 255, 255]")}
    assert [r.output.name for r in runs] == [f"reference-collage-{i}" for i in range(4)] + ["sdxl"]
    assert all(r.output.parent == tmp_path / "out" / "demo" and r.n_images == 4 for r in runs)


def test_a_named_version_names_the_folder(tmp_path: Path) -> None:
    # Two versions of one benchmark in a sweep get a folder each; a plain name keeps its folder.
    sweep = {**SWEEP, "benchmarks": ["relationbench@1", "relationbench@2", "demo"], "methods": [{"method": "sdxl"}]}
    runs = plan(load_sweep(write(tmp_path, sweep)))
    assert [r.output.relative_to(tmp_path / "out").as_posix() for r in runs] == [
        "relationbench@1/sdxl", "relationbench@2/sdxl", "demo/sdxl"]


def test_sweep_runs_resume_and_record_each_setting(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, SWEEP))
    runs = plan(sweep)
    summaries = run_sweep(sweep, runs, progress=False)
    assert [s.generated for s in summaries] == [4] * 5
    stretched = next(r for r in runs if r.settings["fit"] == "stretch" if r.method == "reference-collage")
    rows = read_rows(stretched.output / "samples.jsonl")
    assert {row["method_settings"]["fit"] for row in rows} == {"stretch"}
    assert [s.generated for s in run_sweep(sweep, runs, progress=False)] == [0] * 5  # resumed: nothing left


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "colour: unknown key"),
        ({"methods": []}, "methods: expected a non-empty list"),
        ({"methods": [{"method": "sdxl", "grid": {"guidance_scale": 5}}]}, "grid.guidance_scale: expected a non-empty list"),
        ({"methods": [{"method": "sdxl", "grid": {"steps": [1]}}]}, "--set sdxl.steps: unknown setting"),
        ({"methods": [{"method": "sdlx"}]}, "Did you mean 'sdxl'"),
        ({"seeds": ["a"]}, "seeds: expected a non-empty list of integers"),
        ({"benchmarks": ["nope"]}, "unknown benchmark 'nope'"),
        ({"methods": [{"method": "sdxl"}, {"method": "sdxl"}]}, "share an output folder"),
        ({"embedder_dtype": "fp8"}, "embedder_dtype: unknown precision 'fp8'; expected one of float32, tf32, bfloat16, float16"),
    ],
)
def test_bad_sweep_files_fail_before_any_work(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(RelbenchError, match=message):
        plan(load_sweep(write(tmp_path, {**SWEEP, **change})))


def test_the_embedder_precision_reaches_every_grid_point(tmp_path: Path) -> None:
    from relbench.sweep import evaluate_options

    sweep = load_sweep(write(tmp_path, {**SWEEP, "embedder_dtype": "bfloat16"}))
    assert {evaluate_options(sweep, run).embedder_dtype for run in plan(sweep)} == {"bfloat16"}
    default = load_sweep(write(tmp_path, SWEEP))
    assert {evaluate_options(default, run).embedder_dtype for run in plan(default)} == {None}
