"""The command line end to end: the README's main job, resume after a kill, and user errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from relbench.runstore import read_rows

REPO = Path(__file__).resolve().parents[1]


def relbench(*args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"relbench {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_help_imports_no_torch() -> None:
    code = (
        "import sys, cli\n"
        "try:\n    cli.app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'PIL', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from cli import methods_list, metrics_list\nmethods_list(); metrics_list()\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "sdxl" in result.stdout and "reference-collage" in result.stdout


@pytest.mark.slow
def test_readme_main_job_evaluate_then_report(tmp_path: Path) -> None:
    from relbench.methods import METHODS
    from relbench.metrics import METRICS

    # `all`: every method that runs in the tiny profile without required settings (dreamrelation needs --lora).
    methods = sorted(e.name for e in METHODS.entries() if "tiny" in e.meta["profiles"] and not e.meta.get("requires"))
    assert {"reference-collage", "sdxl", "ms-diffusion"} <= set(methods) and "dreamrelation" not in methods
    out = tmp_path / "demo-run"
    result = relbench("evaluate", "--method", "all", "--benchmark", "demo", "--profile", "tiny", "--output", str(out))
    n = 4 * len(methods)
    assert f"{n} rows ({n} images generated" in result.stdout
    rows = read_rows(out / "samples.jsonl")
    assert sorted(Counter(r["method"] for r in rows).items()) == [(m, 4) for m in methods]
    run = json.loads((out / "run.json").read_text())
    assert run["benchmark"]["name"] == "demo" and run["profile"] == "tiny"
    assert run["packages"]["torch"] and sorted(run["methods"]) == methods
    assert sorted(run["metrics"]) == METRICS.names()
    for row in rows:
        with Image.open(out / row["image"]) as image:
            assert image.size == (64, 64)
        assert row["method_settings"]["profile"] == "tiny"
        for name, metric in row["metrics"].items():
            assert isinstance(metric["value"], float) and metric["settings"], name
        assert set(row["metrics"]) == set(run["metrics"])

    again = relbench("evaluate", "--method", "all", "--benchmark", "demo", "--profile", "tiny", "--output", str(out))
    assert f"0 images generated, 0 reused, {n} already done" in again.stdout
    assert len(read_rows(out / "samples.jsonl")) == n

    report = relbench("report", str(out))
    index = out / "report" / "index.html"
    assert f"report: {index}" in report.stdout
    page = index.read_text()
    assert "not meaningful" in page and "an astronaut hugging a cat" in page
    with open(out / "leaderboard.csv", newline="") as handle:
        board = list(csv.DictReader(handle))
    assert sorted(r["method"] for r in board) == methods
    assert all(r["n_images"] == "4" for r in board)

    merged = tmp_path / "board.csv"
    relbench("leaderboard", str(out), "--output", str(merged))
    assert merged.read_text() == (out / "leaderboard.csv").read_text()


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_exactly_one_row_per_item(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cli", "evaluate", "-m", "reference-collage,sdxl", "-b", "demo", "--seeds", "0,1,2",
            "--metrics", "none", "-o", str(out), "-q"]
    expected = {(m, c, s) for m in ("reference-collage", "sdxl") for c in range(4) for s in range(3)}
    # Kill at several moments: while loading, after the first rows, in the middle of sdxl's batches.
    for rows_before_kill in (0, 1, 14, 17):
        process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            have = len(read_rows(out / "samples.jsonl")) if (out / "samples.jsonl").exists() else 0
            if have >= rows_before_kill:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    relbench(*args[3:])
    rows = read_rows(out / "samples.jsonl")
    keys = Counter((r["method"], r["case_id"], r["seed"]) for r in rows)
    assert all(n == 1 for n in keys.values()), keys
    assert len(keys) == len(expected) == 24
    assert (out / "samples.jsonl").read_bytes().endswith(b"\n")
    for row in rows:
        with Image.open(out / row["image"]) as image:
            image.load()  # every image complete
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_a_killed_run_is_completed_identically_to_an_uninterrupted_one(tmp_path: Path) -> None:
    import numpy as np

    common = ["evaluate", "-m", "sdxl", "-b", "demo", "--seeds", "0,1", "--metrics", "none", "-q"]
    relbench(*common, "-o", str(tmp_path / "whole"))
    partial = tmp_path / "partial"
    # SIGKILL from inside the process right after its 4th row is on disk: a kill at a fixed point,
    # so the test cannot race a fast machine that finishes all 8 rows before a watcher reacts.
    kill_after_4_rows = (
        "import os, signal, sys\n"
        "import relbench.runstore as runstore\n"
        "write = runstore.RunWriter._write\n"
        "def write_then_die(self, row):\n"
        "    write(self, row)\n"
        "    if self._lines >= 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "runstore.RunWriter._write = write_then_die\n"
        "import cli\n"
        "sys.argv = ['relbench', *sys.argv[1:]]\n"
        "cli.main()\n"
    )
    process = subprocess.run([sys.executable, "-c", kill_after_4_rows, *common, "-o", str(partial)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert process.returncode == -signal.SIGKILL
    done_before = len(read_rows(partial / "samples.jsonl"))
    assert done_before == 4  # killed part-way: the resumed run has work left
    relbench(*common, "-o", str(partial))
    whole_rows = {(r["case_id"], r["seed"]) for r in read_rows(tmp_path / "whole" / "samples.jsonl")}
    assert {(r["case_id"], r["seed"]) for r in read_rows(partial / "samples.jsonl")} == whole_rows
    for case, seed in whole_rows:
        a = np.asarray(Image.open(tmp_path / "whole" / "images" / "sdxl" / case / f"{seed}.png"), dtype=int)
        b = np.asarray(Image.open(partial / "images" / "sdxl" / case / f"{seed}.png"), dtype=int)
        assert np.abs(a - b).max() <= 2, (case, seed)


def test_user_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "-m", "sdxxl", check=False),
                          "unknown method 'sdxxl'", "Did you mean 'sdxl'?", "Available: ")
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "-b", "dmeo", check=False), "Did you mean 'demo'?")
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "--seeds", "1,x", check=False), "--seeds")
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "--set", "sdxl=3", check=False), "METHOD.SETTING=VALUE")
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "--profile", "huge", check=False), "unknown profile 'huge'")
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "--metrics", "clip_z", check=False), "unknown metric 'clip_z'")
    assert_one_line_error(relbench("evaluate", "-o", str(tmp_path / "r"), "-b", "relationbench", "--data-root", str(tmp_path / "empty"),
                                   check=False), "image not found", "relbench data download")
    assert_one_line_error(relbench("report", str(tmp_path), check=False), str(tmp_path))
    usage = relbench("evaluate", check=False)
    assert usage.returncode == 2 and "Missing option" in usage.stderr and "Traceback" not in usage.stderr


def test_data_validate_lists_the_first_10_missing_images_the_count_of_the_rest_and_the_fix(tmp_path: Path) -> None:
    subjects = [{"id": f"s{i:02d}", "class_noun": "dog", "category": "animal", "images": [f"s{i:02d}.png"]} for i in range(13)]
    spec = {"name": "mine", "version": "1", "subjects": subjects,
            "relations": [{"id": "hug", "phrase": "hugging", "kind": "interaction", "fits": [["animal"], ["animal"]]}],
            "cases": [{"id": "c", "subjects": ["s00", "s01"], "relation": "hug", "prompt": "a dog hugging a dog",
                       "boxes": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]}]}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    result = relbench("data", "validate", "--spec", str(path), "--data-root", str(root), check=False)
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[:10] == [f"{path}: subjects[s{i:02d}].images[0]: image not found: {root / f's{i:02d}.png'} (data root {root})"
                          for i in range(10)]
    assert lines[10:] == ["... and 3 more (--all lists every one)"]
    assert result.stderr.splitlines()[0] == f"{path}: 13 problems found"
    assert "fix: fetch the benchmark files with `relbench data download`, or point --data-root" in result.stderr
    every = relbench("data", "validate", "--spec", str(path), "--data-root", str(root), "--all", check=False)
    assert len(every.stdout.splitlines()) == 13 and every.stdout.splitlines()[12].startswith(f"{path}: subjects[s12]")


def test_data_validate_reports_every_problem_and_exits_2(tmp_path: Path) -> None:
    spec = {
        "name": "mine", "version": "1",
        "subjects": [{"id": "a", "class_noun": "dog", "category": "animal", "images": ["a.png"]},
                     {"id": "b", "class_noun": "cat", "category": "animal", "images": ["b.png"]}],
        "relations": [{"id": "hug", "phrase": "hugging", "kind": "interaction", "fits": [["animal"], ["animal"]]}],
        "cases": [{"id": "c", "subjects": ["a", "b"], "relation": "hug", "prompt": "a dog hugging a cat",
                   "boxes": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]}],
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = relbench("data", "validate", "--spec", str(path), "--data-root", str(tmp_path), check=False)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"{path}: subjects[b].images[0]: image not found: {tmp_path / 'b.png'} (data root {tmp_path})"]
    assert result.stderr.splitlines() == [
        f"{path}: 1 problem found",
        "fix: fetch the benchmark files with `relbench data download`, or point --data-root (or $RELBENCH_DATA_ROOT) at "
        f"the folder that holds them (data root now: {tmp_path})"]
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    ok = relbench("data", "validate", "--spec", str(path), "--data-root", str(tmp_path))
    assert ok.stdout.strip() == f"mine v1: 1 cases, 1 relations, 2 subjects, 2 images checked in {tmp_path}"

    spec["cases"][0]["boxes"] = [[0, 0, 2, 1]]
    spec["relations"][0]["kind"] = "friendly"
    path.write_text(yaml.safe_dump(spec))
    bad = relbench("data", "validate", "--spec", str(path), check=False)
    assert bad.returncode == 2
    lines = bad.stdout.splitlines()
    assert f"{path}: relations[hug].kind: expected one of interaction, spatial, action, got 'friendly'" in lines
    assert any(line.startswith(f"{path}: cases[c].relation: unknown relation 'hug'") for line in lines)
    assert f"{path}: cases[c].boxes: expected one box per subject (2), got [[0, 0, 2, 1]]" in lines
    assert len(lines) == 3
    assert_one_line_error(relbench("data", "validate", check=False), "exactly one of --benchmark NAME, --spec FILE or --triplets DIR")


def test_data_list_and_validate_builtin_demo() -> None:
    listing = relbench("data", "list").stdout.splitlines()
    assert [line.split("  ")[0] for line in listing] == ["demo@1 (= demo)", "relationbench@1", "relationbench@2 (= relationbench)"]
    assert " 120 cases  15 relations  30 subjects  120 subject sets " in listing[1]
    assert " 120 cases  15 relations  27 subjects   40 subject sets " in listing[2]
    assert_one_line_error(relbench("data", "validate", "-b", "relationbench@3", check=False),
                          "unknown benchmark version 'relationbench@3'. Did you mean 'relationbench@2', 'relationbench@1'?")
    assert relbench("data", "validate", "--benchmark", "demo").stdout.startswith("demo v1: 4 cases, 4 relations, 4 subjects, 4 images checked")


@pytest.mark.shared_data
def test_data_validate_relationbench_on_the_shared_data(shared_data: Path) -> None:
    result = relbench("data", "validate", "--benchmark", "relationbench@1", "--data-root", str(shared_data))
    assert result.stdout.startswith("relationbench v1: 120 cases, 15 relations, 30 subjects, 188 images checked")
    result = relbench("data", "validate", "--benchmark", "relationbench", "--data-root", str(shared_data))
    assert result.stdout.startswith("relationbench v2: 120 cases, 15 relations, 27 subjects, 171 images checked")


@pytest.mark.slow
def test_generate_then_score_stages_never_regenerate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["-b", "demo", "-o", str(out), "-q"]
    relbench("evaluate", "-m", "reference-collage", "--stage", "generate", *common)
    rows = read_rows(out / "samples.jsonl")
    assert len(rows) == 4 and all(r["metrics"] == {} for r in rows)
    images = {r["image"]: (out / r["image"]).read_bytes() for r in rows}
    mtimes = {r["image"]: (out / r["image"]).stat().st_mtime_ns for r in rows}

    scored = relbench("evaluate", "--stage", "score", "--metrics", "clip_t", *common)
    assert "0 images generated" in scored.stdout and "4 stored images scored" in scored.stdout
    relbench("evaluate", "--stage", "score", "--metrics", "dino", *common)
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4  # compacted: one line per image
    for row in map(json.loads, lines):
        assert set(row["metrics"]) == {"clip_t", "dino"}
        assert row["metrics"]["dino"]["higher_is_better"] is True
        assert (out / row["image"]).read_bytes() == images[row["image"]]
        assert (out / row["image"]).stat().st_mtime_ns == mtimes[row["image"]]
    run = json.loads((out / "run.json").read_text())
    assert set(run["metrics"]) == {"clip_t", "dino"} and run["metrics"]["dino"]["settings"]["pooling"] == "cls"
    again = relbench("evaluate", "--stage", "score", "--metrics", "clip_t,dino", *common)
    assert "0 stored images scored" in again.stdout


def test_relations_filter_and_limit(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = relbench("evaluate", "-m", "reference-collage", "-b", "demo", "--relations", "hug,carry", "--metrics", "none",
                      "-o", str(out), "-q")
    assert "2 rows" in result.stdout
    assert sorted(r["relation"] for r in read_rows(out / "samples.jsonl")) == ["carry", "hug"]
    assert_one_line_error(relbench("evaluate", "-b", "demo", "--relations", "kiss", "-o", str(tmp_path / "x"), check=False),
                          "--relations: unknown relation 'kiss'")
    assert_one_line_error(relbench("evaluate", "-b", "demo", "--stage", "paint", "-o", str(tmp_path / "x"), check=False), "--stage")


@pytest.mark.shared_data
def test_data_validate_triplets(shared_data: Path, tmp_path: Path) -> None:
    import shutil

    ok = relbench("data", "validate", "--triplets", str(shared_data / "dreamrelation"))
    assert ok.stdout.strip().endswith("hug: 5 triplets, shake: 5 triplets checked")
    broken = tmp_path / "dr"
    shutil.copytree(shared_data / "dreamrelation" / "hug", broken / "hug")
    (broken / "hug" / "videos" / "3" / "concept1.png").unlink()
    result = relbench("data", "validate", "--triplets", str(broken), check=False)
    assert result.returncode == 2
    assert any("videos/3" in line and "names 2 entities" in line for line in result.stdout.splitlines())


@pytest.mark.slow
def test_two_processes_split_the_items_and_merge_to_the_single_process_result(tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` on the CPU (gloo): each process writes its own
    shard, the main one merges; the result equals a single-process run."""
    import numpy as np

    args = ["evaluate", "-m", "reference-collage,sdxl", "-b", "demo", "--seeds", "0,1", "--metrics", "clip_t", "-q"]
    relbench(*args, "-o", str(tmp_path / "one"))
    accelerate = Path(sys.executable).parent / "accelerate"
    two = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cli", *args, "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=REPO, env=os.environ, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("rows (") == 1 and "16 rows" in two.stdout  # the main process reports the merge
    one_rows = {(r["method"], r["case_id"], r["seed"]): r for r in read_rows(tmp_path / "one" / "samples.jsonl")}
    lines = (tmp_path / "two" / "samples.jsonl").read_text().splitlines()
    two_rows = {(r["method"], r["case_id"], r["seed"]): r for r in map(json.loads, lines)}
    assert len(lines) == len(two_rows) == len(one_rows) == 16 and two_rows.keys() == one_rows.keys()
    assert not list((tmp_path / "two").glob("samples.rank-*.jsonl"))
    for key, row in one_rows.items():
        a = np.asarray(Image.open(tmp_path / "one" / row["image"]), dtype=int)
        b = np.asarray(Image.open(tmp_path / "two" / two_rows[key]["image"]), dtype=int)
        assert np.abs(a - b).max() <= 2, key  # batch composition differs: float noise only
        assert abs(row["metrics"]["clip_t"]["value"] - two_rows[key]["metrics"]["clip_t"]["value"]) < 1e-2


def test_shard_files_left_by_a_killed_multi_process_run_are_merged(tmp_path: Path) -> None:
    from relbench.runstore import RunStore

    out = tmp_path / "run"
    relbench("evaluate", "-m", "reference-collage", "-b", "demo", "--metrics", "none", "--limit", "2", "-o", str(out), "-q")
    rows = read_rows(out / "samples.jsonl")
    # a killed 2-process run: one row only in a shard, a newer version of another row in a shard
    (out / "samples.rank-1.jsonl").write_text(json.dumps({**rows[0], "seed": 7}) + "\n" + json.dumps({**rows[1], "prompt": "newer"}) + "\n")
    (out / "samples.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    relbench("evaluate", "-m", "reference-collage", "-b", "demo", "--metrics", "none", "--limit", "2", "-o", str(out), "-q")
    merged = read_rows(out / "samples.jsonl")
    assert len(merged) == 3 and not list(out.glob("samples.rank-*.jsonl"))
    assert {r["prompt"] for r in merged if r["case_id"] == rows[1]["case_id"]} == {"newer"}
    assert len(RunStore(out).rows()) == 3


def test_sweep_dry_run_and_report_over_a_sweep_tree(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "output": "out", "profile": "tiny", "benchmarks": ["demo"], "seeds": [0], "metrics": ["clip_t"], "limit": 1,
        "methods": [{"method": "reference-collage", "grid": {"fit": ["contain", "stretch"]}}],
    }))
    dry = relbench("sweep", str(sweep), "--dry-run")
    assert dry.stdout.strip().splitlines()[-1] == f"2 runs, 2 images, profile tiny, output {tmp_path / 'out'}"
    assert not (tmp_path / "out").exists()
    relbench("sweep", str(sweep), "-q")
    report = relbench("report", str(tmp_path / "out"), "-o", str(tmp_path / "report"))
    assert f"report: {tmp_path / 'report' / 'index.html'}" in report.stdout
    with open(tmp_path / "report" / "leaderboard.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # two settings of one method, one row each


def test_report_leaderboard_and_compare_name_their_headline_and_case_sets(tmp_path: Path) -> None:
    from test_reports import BASE_SAMPLES, make_run

    run = make_run(tmp_path / "run", BASE_SAMPLES)  # collage scored one case of two; no relation_vqa
    report = relbench("report", str(run))
    assert report.stdout.splitlines()[:2] == [
        "headline metric: clip_t (fallback: the default relation_vqa was not computed in these runs)",
        "cases: clip_t, clip_i, pose_error: the configurations scored different cases; each mean is over the cases all "
        "of them scored (the default; --all-cases: each one's own cases)",
    ]
    board = relbench("leaderboard", str(run), "-o", str(tmp_path / "b.csv"), "--headline", "pose_error", "--all-cases")
    assert board.stdout.splitlines()[0] == "headline metric: pose_error (chosen with --headline)"
    with open(tmp_path / "b.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["pose_error"], r["pose_error_n"], r["pose_error_case_set"]) for r in rows] == [
        ("sdxl", "0.3", "2", "differ"), ("reference-collage", "0.5", "1", "differ"),
    ]
    compared = relbench("compare", str(run), "-a", "sdxl", "-b", "reference-collage", "--metrics", "clip_t")
    assert "no difference detected" in compared.stdout and " is better" not in compared.stdout  # one common case
    for command in (["report", str(run)], ["leaderboard", str(run), "-o", str(tmp_path / "c.csv")]):
        assert_one_line_error(relbench(*command, "--headline", "relation_vqa", check=False),
                              "--headline 'relation_vqa': not computed in these runs (metrics with values: clip_t, clip_i, pose_error)")


def test_generate_one_image_for_a_case_and_for_own_inputs(tmp_path: Path) -> None:
    case = relbench("generate", "-m", "reference-collage", "--case", "cat-next-to-rocket", "-o", str(tmp_path / "a.png"))
    assert case.stdout.strip() == f"image: {tmp_path / 'a.png'}"
    assert Image.open(tmp_path / "a.png").size == (64, 64)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    own = ["generate", "-m", "ms-diffusion", "--image", str(tmp_path / "red.png"), "--image", str(tmp_path / "blue.png"),
           "--image", str(tmp_path / "red.png"), "--phrase", "dog", "--phrase", "cat", "--phrase", "bear",
           "--box", "0,0.2,0.45,0.85", "--box", "0.45,0.2,0.7,0.85", "--box", "0.55,0.25,0.95,0.9",
           "--prompt", "a dog, a cat and a bear sitting together", "--resolution", "32", "-o", str(tmp_path / "b.png")]
    relbench(*own)
    assert Image.open(tmp_path / "b.png").size == (32, 32)
    assert_one_line_error(relbench("generate", "-m", "sdxl", "--case", "nope", "-o", str(tmp_path / "c.png"), check=False),
                          "--case 'nope': not a case of demo v1")
    assert_one_line_error(relbench("generate", "-m", "sdxl", "--image", str(tmp_path / "red.png"), "--phrase", "dog",
                                   "--box", "1,2", "--prompt", "p", "-o", str(tmp_path / "d.png"), check=False), "--box '1,2'")
    assert_one_line_error(relbench("generate", "-m", "dreamrelation", "--case", "astronaut-hug-cat", "-o", str(tmp_path / "e.png"),
                                   check=False), "dreamrelation needs a relation LoRA")


def test_metric_details_carry_the_keys_the_report_filters_read(tmp_path: Path) -> None:
    from relbench.reports.tables import FLAG_RULES, VERDICT_KEY

    out = tmp_path / "run"
    relbench("evaluate", "-m", "reference-collage", "-b", "demo", "--limit", "1", "--metrics", "presence,confusion,relation_acc",
             "-o", str(out), "-q")
    (row,) = read_rows(out / "samples.jsonl")
    keys = {key for metric in row["metrics"].values() for key in metric["details"]}
    assert VERDICT_KEY in keys
    assert {rule.key for rule in FLAG_RULES} & keys >= {"n_missing", "presence_fraction", "swapped", "blended"}
