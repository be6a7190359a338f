"""relbench sweep's launchers: the slurm: section, the sbatch scripts and submitit calls, job status,
--retry-failed, local --max-parallel, partial reports, and a real one-node Slurm (slow; skips with
the reason where its daemons cannot start)."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from relbench.errors import RelbenchError
from relbench.runstore import read_rows
from relbench.sweep import load_sweep, plan
from relbench.sweep_launch import (
    JOBS_FILE, SlurmSettings, launch_slurm, parse_slurm, partial_notes, run_progress, select_jobs, sweep_jobs,
    sweep_status,
)

REPO = Path(__file__).resolve().parents[1]

COLLAGE_2X2 = {"method": "reference-collage", "grid": {"fit": ["contain", "stretch"], "background": [[0, 0, 0], [255, 255, 255]]}}


def write_sweep(folder: Path, **changes: object) -> Path:
    sweep = {"output": "out", "profile": "tiny", "benchmarks": ["demo"], "seeds": [0], "metrics": ["none"], "limit": 2,
             "methods": [COLLAGE_2X2], **changes}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def relbench(*args: str, env: dict[str, str] | None = None, check: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=900,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"relbench {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


# ---------------------------------------------------------------------------------------------
# The sweep file


def test_slurm_section_is_read_with_its_defaults() -> None:
    assert parse_slurm(None, "s: slurm") == SlurmSettings()
    settings = parse_slurm({"partition": "gpu", "gpus_per_job": 0, "time": 30, "sbatch": {"reservation": "week"},
                            "setup": ["module load cuda"], "mem": "64G", "max_jobs": 2}, "s: slurm")
    assert settings == SlurmSettings(partition="gpu", gpus_per_job=0, time=30, sbatch={"reservation": "week"},
                                     setup=("module load cuda",), mem="64G", max_jobs=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"launcher": "pbs"}, "launcher: expected one of local, slurm, got 'pbs'"),
        ({"max_parallel": 0}, "max_parallel: expected an integer >= 1, got 0"),
        ({"slurm": {"gpus": 2}}, r"slurm.gpus: unknown key"),
        ({"slurm": {"gpus_per_job": -1}}, r"slurm.gpus_per_job: expected an integer >= 0, got -1"),
        ({"slurm": {"time": "2h"}}, r"slurm.time: expected an integer >= 1, got '2h'"),
        ({"slurm": {"sbatch": {"--qos": "high"}}}, r"slurm.sbatch: expected a mapping of sbatch option \(without --\)"),
        ({"slurm": {"partition": ""}}, r"slurm.partition: expected a non-empty string"),
        ({"slurm": ["gpu"]}, r"slurm: expected a mapping"),
    ],
)
def test_bad_launch_settings_fail_with_the_field(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(RelbenchError, match=message):
        load_sweep(write_sweep(tmp_path, **change))


def test_trainable_methods_get_one_training_job_their_evaluations_wait_for(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, methods=[
        COLLAGE_2X2, {"method": "dreambooth-lora", "grid": {"guidance_scale": [5, 7]}}]))
    jobs = sweep_jobs(sweep, plan(sweep))
    assert [(j.key, j.kind, j.depends) for j in jobs] == [
        ("train/dreambooth-lora", "train", None),
        *[(f"demo/reference-collage-{i}", "evaluate", None) for i in range(4)],
        ("demo/dreambooth-lora-0", "evaluate", "train/dreambooth-lora"),
        ("demo/dreambooth-lora-1", "evaluate", "train/dreambooth-lora"),
    ]
    # The training job trains what both grid points need (same training settings: trained once).
    assert [o.method_overrides for o in jobs[0].options] == [
        {"dreambooth-lora": {"guidance_scale": "5"}}, {"dreambooth-lora": {"guidance_scale": "7"}}]


# ---------------------------------------------------------------------------------------------
# The sbatch scripts and submitit calls, against stand-in sbatch/squeue/srun


FAKE_SBATCH = """#!/bin/sh
# Records the script it is given and answers as sbatch does.
n=$(($(cat "$FAKE_SLURM/count" 2>/dev/null || echo 1000) + 1))
echo $n > "$FAKE_SLURM/count"
cp "$1" "$FAKE_SLURM/script-$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SQUEUE = """#!/bin/sh
# The queue: whatever the test wrote into $FAKE_SLURM/queue ("ID STATE" lines).
cat "$FAKE_SLURM/queue" 2>/dev/null
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir, record = tmp_path / "bin", tmp_path / "fake-slurm"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(record))
    return record


def sbatch_lines(script: Path) -> dict[str, str]:
    out = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            out[key] = value
    return out


def test_sbatch_scripts_and_submitit_calls(tmp_path: Path, fake_slurm: Path) -> None:
    import submitit

    slurm = {"partition": "gpu", "account": "lab", "gpus_per_job": 2, "cpus_per_job": 16, "mem": "64G", "time": 120,
             "constraint": "a100", "sbatch": {"reservation": "week"}, "setup": ["module load cuda/12"], "max_jobs": 3}
    sweep = load_sweep(write_sweep(tmp_path, launcher="slurm", slurm=slurm, methods=[
        COLLAGE_2X2, {"method": "dreambooth-lora", "grid": {"guidance_scale": [5, 7]}}]))
    runs = plan(sweep)
    submitted = launch_slurm(sweep, sweep.slurm, select_jobs(sweep, runs, sweep_jobs(sweep, runs), retry_failed=False))
    # sbatch calls: the training alone (1001), the collage array (1002), the array waiting for the training (1003).
    assert submitted == {"train/dreambooth-lora": "1001", **{f"demo/reference-collage-{i}": f"1002_{i}" for i in range(4)},
                         "demo/dreambooth-lora-0": "1003_0", "demo/dreambooth-lora-1": "1003_1"}
    common = {"partition": "gpu", "account": "lab", "gpus-per-node": "2", "ntasks-per-node": "2", "cpus-per-task": "8",
              "mem": "64G", "time": "120", "constraint": "a100", "reservation": "week", "nodes": "1"}
    train, collage, waiting = (sbatch_lines(fake_slurm / f"script-{n}.sh") for n in (1001, 1002, 1003))
    for lines in (train, collage, waiting):
        assert {k: lines.get(k) for k in common} == common
    assert "array" not in train and "dependency" not in train and "dependency" not in collage
    assert collage["array"] == "0-3%3" and waiting["array"] == "0-1%2"
    assert waiting["dependency"] == "afterok:1001" and waiting["kill-on-invalid-dep"] == "yes"
    assert "module load cuda/12" in (fake_slurm / "script-1002.sh").read_text()
    assert "-m submitit.core._submit" in (fake_slurm / "script-1002.sh").read_text()
    # What each job runs: relbench.sweep_launch.run_slurm_job with its grid point's evaluate options.
    pickles = sorted((sweep.output / "slurm").glob("1003_*/*_submitted.pkl"))
    loaded = [submitit.core.utils.DelayedSubmission.load(p) for p in pickles]
    assert [(d.function.__module__, d.function.__qualname__) for d in loaded] == [("relbench.sweep_launch", "run_slurm_job")] * 2
    assert [(d.args[0].key, d.args[0].options[0].output) for d in loaded] == [
        (f"demo/dreambooth-lora-{i}", sweep.output / "demo" / f"dreambooth-lora-{i}") for i in range(2)]
    record = json.loads((sweep.output / JOBS_FILE).read_text())
    assert record["demo/reference-collage-2"]["job_id"] == "1002_2"
    assert record["demo/reference-collage-2"]["stdout"].endswith("1002_2/1002_2_0_log.out")

    # Queued and running jobs are not submitted again; status reads them from squeue.
    (fake_slurm / "queue").write_text("1001 RUNNING None\n" + "".join(f"1002_{i} PENDING Priority\n" for i in range(4)) +
                                      "1003_0 PENDING Dependency\n1003_1 PENDING Dependency\n")
    assert select_jobs(sweep, runs, sweep_jobs(sweep, runs), retry_failed=False) == []
    status = {p.key: (p.state, p.job, p.detail) for p in sweep_status(sweep, runs)}
    assert status["demo/reference-collage-1"] == ("pending", "1002_1", "Priority")
    assert status["demo/dreambooth-lora-0"] == ("pending", "1003_0", "Dependency")
    # Gone from the queue without their rows: failed, with the last lines of the log.
    (fake_slurm / "queue").write_text("1002_0 RUNNING None\n")
    log = Path(record["demo/reference-collage-3"]["stderr"])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("loading\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    status = {p.key: p for p in sweep_status(sweep, runs)}
    assert (status["demo/reference-collage-0"].state, status["demo/reference-collage-3"].state) == ("running", "failed")
    assert status["demo/reference-collage-3"].detail.endswith("RuntimeError: CUDA out of memory")
    assert status["demo/reference-collage-1"].detail.startswith("no log")
    # --retry-failed: every failed point but the running one, and the training its points wait for.
    retry = select_jobs(sweep, runs, sweep_jobs(sweep, runs), retry_failed=True)
    assert [j.key for j in retry] == ["train/dreambooth-lora", *[f"demo/reference-collage-{i}" for i in (1, 2, 3)],
                                      "demo/dreambooth-lora-0", "demo/dreambooth-lora-1"]


def test_sweep_status_and_retry_from_the_cli(tmp_path: Path, fake_slurm: Path) -> None:
    path = write_sweep(tmp_path, launcher="slurm", slurm={"gpus_per_job": 0}, methods=[{"method": "reference-collage"}])
    out = relbench("sweep", str(path), "-q").stdout
    assert "submitted demo/reference-collage: job 1001" in out
    assert relbench("sweep", "status", str(path)).stdout.splitlines() == [
        "failed   demo/reference-collage: 0/2 items [1001]",
        "    | no log (the job did not start, or was cancelled before)",
        "0 done, 0 running, 0 pending, 1 failed",
    ]
    (fake_slurm / "queue").write_text("1001 PENDING Resources\n")
    assert relbench("sweep", "status", str(path)).stdout.splitlines()[0] == "pending  demo/reference-collage: 0/2 items [1001] (Resources)"
    assert "nothing to start" in relbench("sweep", str(path), "-q").stdout
    (fake_slurm / "queue").write_text("")
    assert "submitted demo/reference-collage: job 1002" in relbench("sweep", str(path), "--retry-failed").stdout


# ---------------------------------------------------------------------------------------------
# Progress of a run and partial reports


def test_a_report_of_a_run_still_filling_marks_it_partial(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, methods=[{"method": "reference-collage"}], seeds=[0, 1])
    relbench("sweep", str(path), "-q")
    run = tmp_path / "out" / "demo" / "reference-collage"
    assert run_progress(run) == {"reference-collage": (4, 4)}
    assert partial_notes([run]) == []
    lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
    (run / "samples.jsonl").write_text("".join(lines[:3]))  # as while the job is still generating its 4th
    assert run_progress(run) == {"reference-collage": (3, 4)}
    out = relbench("report", str(tmp_path / "out")).stdout
    assert f"partial: {run}: reference-collage: 3 of 4 items done; the report shows the done rows only" in out
    page = (run / "report" / "index.html").read_text()  # the page says so too
    assert '<div class="warning" role="alert" id="partial"><strong>Runs still filling</strong>' in page
    assert f"<li>{run}: reference-collage: 3 of 4 items done; the report shows the done rows only</li>" in page
    sweep = load_sweep(path)
    assert [(p.state, p.done, p.total, p.detail) for p in sweep_status(sweep, plan(sweep))] == [("pending", 3, 4, "not started")]


# ---------------------------------------------------------------------------------------------
# Running the jobs (slow: each job is a fresh Python process)


def leaderboard(folder: Path, out: Path) -> list[dict[str, str]]:
    """The report's leaderboard rows, less the commit the runs were made at (others commit meanwhile)."""
    relbench("report", str(folder), "-o", str(out))
    with open(out / "leaderboard.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "git_commit"} for row in csv.DictReader(f)]


def rows_by_point(output: Path) -> dict[str, list[tuple]]:
    return {run.relative_to(output).as_posix(): sorted((r["case_id"], r["seed"], (run / r["image"]).read_bytes()) for r in read_rows(run / "samples.jsonl"))
            for run in sorted(p.parent for p in output.rglob("run.json"))}


@pytest.mark.slow
def test_local_max_parallel_runs_every_point_as_one_process_does(tmp_path: Path) -> None:
    sequential = write_sweep(tmp_path, output="seq")
    relbench("sweep", str(sequential), "-q")
    parallel = tmp_path / "parallel.yaml"
    parallel.write_text(sequential.read_text().replace("output: seq", "output: par"))
    out = relbench("sweep", str(parallel), "--max-parallel", "2", "-q").stdout
    assert "4 jobs done" in out
    assert rows_by_point(tmp_path / "par") == rows_by_point(tmp_path / "seq")
    assert relbench("sweep", "status", str(parallel)).stdout.splitlines()[-1] == "4 done, 0 running, 0 pending, 0 failed"
    assert "nothing to start" in relbench("sweep", str(parallel), "--max-parallel", "2").stdout


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(__file__).parent))
    from slurm_cluster import ClusterUnavailable, start_cluster

    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as exc:
        pytest.skip(f"no single-node Slurm here: {exc}")
    yield cluster
    cluster.stop()


def wait_for_queue_empty(env: dict[str, str], deadline_s: float = 900) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(1)
    raise AssertionError("the sweep's Slurm jobs did not finish")


@pytest.mark.slow
def test_a_sweep_through_a_real_slurm_equals_the_local_one(tmp_path: Path, slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    env = slurm_cluster.env
    via_slurm = write_sweep(tmp_path, output="slurm-out", metrics=["clip_t"], launcher="slurm",
                            slurm={"gpus_per_job": 0, "cpus_per_job": 1, "time": 20, "max_jobs": 2})
    out = relbench("sweep", str(via_slurm), "-q", env=env).stdout
    assert out.count("submitted demo/reference-collage-") == 4
    wait_for_queue_empty(env)
    status = relbench("sweep", "status", str(via_slurm), env=env).stdout
    assert status.splitlines()[-1] == "4 done, 0 running, 0 pending, 0 failed", status
    local = tmp_path / "local.yaml"
    local.write_text(via_slurm.read_text().replace("output: slurm-out", "output: local-out").replace("launcher: slurm", "launcher: local"))
    relbench("sweep", str(local), "-q")
    assert rows_by_point(tmp_path / "slurm-out") == rows_by_point(tmp_path / "local-out")
    board_slurm = leaderboard(tmp_path / "slurm-out", tmp_path / "report-slurm")
    board_local = leaderboard(tmp_path / "local-out", tmp_path / "report-local")
    assert len(board_slurm) == 4 and board_slurm == board_local


# Loaded by every Python process of the job (PYTHONPATH): the first job to store its 2nd row
# cancels itself with scancel, once (the marker file), and waits to be killed.
SCANCEL_AFTER_2_ROWS = """
import os, pathlib, subprocess, time
marker = pathlib.Path(os.environ["SCANCEL_MARKER"])
if os.environ.get("SLURM_JOB_ID") and not marker.exists():
    import relbench.runstore as runstore
    write = runstore.RunWriter._write
    def write_then_cancel(self, row):
        write(self, row)
        if self._lines >= 2 and not marker.exists():
            marker.write_text(os.environ["SLURM_JOB_ID"])
            subprocess.run(["scancel", os.environ["SLURM_JOB_ID"]])
            time.sleep(600)
    runstore.RunWriter._write = write_then_cancel
"""


@pytest.mark.slow
def test_a_job_cancelled_mid_run_and_retried_ends_with_one_row_per_item(tmp_path: Path, slurm_cluster) -> None:  # type: ignore[no-untyped-def]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SCANCEL_AFTER_2_ROWS)
    env = {**slurm_cluster.env, "PYTHONPATH": str(hook), "SCANCEL_MARKER": str(tmp_path / "cancelled")}
    path = write_sweep(tmp_path, seeds=[0, 1], launcher="slurm", methods=[{"method": "reference-collage"}],
                       slurm={"gpus_per_job": 0, "time": 20})
    relbench("sweep", str(path), "-q", env=env)
    wait_for_queue_empty(env)
    assert (tmp_path / "cancelled").exists()
    run = tmp_path / "out" / "demo" / "reference-collage"
    assert len(read_rows(run / "samples.jsonl")) == 2
    status = relbench("sweep", "status", str(path), env=env).stdout
    assert status.startswith("failed   demo/reference-collage: 2/4 items"), status
    assert "submitted demo/reference-collage" in relbench("sweep", str(path), "--retry-failed", "-q", env=env).stdout
    wait_for_queue_empty(env)
    rows = read_rows(run / "samples.jsonl")
    assert sorted((r["case_id"], r["seed"]) for r in rows) == sorted({(r["case_id"], r["seed"]) for r in rows})
    assert len(rows) == 4
    assert relbench("sweep", "status", str(path), env=env).stdout.splitlines()[-1] == "1 done, 0 running, 0 pending, 0 failed"


def test_the_training_job_trains_each_subject_set_once_and_evaluations_only_read_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench.benchmarks import load_benchmark
    from relbench.methods.dreambooth_lora import train as db_train
    from relbench.sweep_launch import run_job

    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(tmp_path / "trained"))
    calls: list[list[str]] = []
    real_main = db_train.main
    monkeypatch.setattr(db_train, "main", lambda argv, **kw: calls.append(argv) or real_main(argv, **kw))
    sweep = load_sweep(write_sweep(tmp_path, methods=[{"method": "dreambooth-lora", "grid": {"guidance_scale": [5, 7]}}]))
    training, *evaluations = sweep_jobs(sweep, plan(sweep))
    cases = load_benchmark("demo").cases[:2]
    subject_sets = {tuple(sorted(case.subjects)) for case in cases}
    run_job(training)  # both grid points: the same training settings, so each subject set once
    assert len(calls) == len(subject_sets)
    assert len(list((tmp_path / "trained" / "dreambooth-lora").glob("*/*/complete.json"))) == len(subject_sets)
    for job in evaluations:
        run_job(job)
    assert len(calls) == len(subject_sets)  # the evaluation jobs found every subject set trained
    assert [run_progress(sweep.output / "demo" / f"dreambooth-lora-{i}") for i in (0, 1)] == [{"dreambooth-lora": (2, 2)}] * 2


@pytest.mark.slow
def test_a_failed_local_point_is_listed_and_retried_alone(tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    blocked = tmp_path / "out" / "demo" / "reference-collage-1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the point's run folder goes")  # its evaluation cannot write there
    result = relbench("sweep", str(path), "--max-parallel", "2", "-q", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: 1 of 4 jobs failed (demo/reference-collage-1: "), result.stderr
    lines = relbench("sweep", "status", str(path)).stdout.splitlines()
    assert lines[-1] == "3 done, 0 running, 0 pending, 1 failed"
    assert lines[0] == "done     demo/reference-collage-0: 2/2 items [local]"
    assert lines[1] == "failed   demo/reference-collage-1: 0/2 items [local]", lines
    assert lines[2] == f"    | {blocked}: --output exists and is not a directory"
    blocked.unlink()
    assert "1 jobs done" in relbench("sweep", str(path), "--retry-failed", "--max-parallel", "2", "-q").stdout
    assert relbench("sweep", "status", str(path)).stdout.splitlines()[-1] == "4 done, 0 running, 0 pending, 0 failed"


@pytest.mark.slow
def test_a_job_with_two_tasks_shards_its_run_over_them(tmp_path: Path, slurm_cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # gpus_per_job: 2 gives two tasks (the sbatch test); here two CPU tasks, as this node has no GPU.
    from relbench.sweep_launch import run_slurm_job, slurm_executor

    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    sweep = load_sweep(write_sweep(tmp_path, seeds=[0, 1], methods=[{"method": "reference-collage"}], slurm={"gpus_per_job": 0}))
    job = sweep_jobs(sweep, plan(sweep))[0]
    executor = slurm_executor(sweep.output / "slurm" / "%j", sweep.slurm)
    executor.update_parameters(ntasks_per_node=2)
    handle = executor.submit(run_slurm_job, job)
    wait_for_queue_empty(slurm_cluster.env)
    assert handle.results() == ["demo/reference-collage"] * 2  # both tasks ran it
    run = sweep.output / "demo" / "reference-collage"
    assert (run / ".lock.rank-0").exists() and (run / ".lock.rank-1").exists()  # each task wrote its own shard
    assert not list(run.glob("samples.rank-*.jsonl"))  # merged by task 0
    single = tmp_path / "single"
    relbench("evaluate", "-m", "reference-collage", "-b", "demo", "--seeds", "0,1", "--limit", "2", "--metrics", "none", "-q", "-o", str(single))
    assert rows_by_point(sweep.output)["demo/reference-collage"] == rows_by_point(single)["."]
