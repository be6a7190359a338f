"""Launchers of ``relbench sweep``: where the grid points of a sweep run, and what state they are in.

A sweep's grid points (benchmark x method x settings point, all its seeds: ``sweep.PlannedRun``)
are its jobs. Trainable methods that train on first need (``Method.train_ahead``) get one training
job per method that trains every subject set or relation all of that method's points need; the
method's evaluation jobs wait for it, so two jobs never train the same thing.

* ``local`` (default): today's behaviour (one process, runs in order); ``max_parallel: N`` runs N
  jobs at once in worker processes, each on its own GPU when there are GPUs (trainings first).
* ``slurm``: submits the jobs with submitit (the sweep file's ``slurm:`` section: partition,
  account, qos, gpus_per_job, cpus_per_job, mem, time, constraint, sbatch: extra options, setup:
  shell lines, max_jobs at once): the evaluation jobs as job arrays, those of a trainable method
  with ``--dependency=afterok:<its training job>``. A job with several GPUs runs one task per GPU,
  sharded as under ``accelerate launch`` (``runner.Shard``).

Every job writes only into its own run folder through the run store, so a killed or failed job
that is started again continues where it stopped. What was submitted is recorded in
``<output>/sweep-jobs.json`` (grid point -> job id and log); ``relbench sweep status FILE`` reads
it with the run stores and ``squeue``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from relbench.runner import EvaluateOptions
    from relbench.sweep import PlannedRun, Sweep

LAUNCHERS = ("local", "slurm")
JOBS_FILE = "sweep-jobs.json"
SLURM_FOLDER = "slurm"  # submitit's scripts, pickles and logs, below the sweep's output
LOG_LINES = 5  # lines of a failed job's log shown by `relbench sweep status`
STATES = ("done", "running", "pending", "failed")


@dataclass(frozen=True)
class SlurmSettings:
    """The sweep file's ``slurm:`` section."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None  # split evenly over the job's tasks (one per GPU)
    mem: str | None = None  # as sbatch --mem takes it: 64G, 200000M
    time: int = 240  # minutes
    constraint: str | None = None
    sbatch: dict[str, str] = field(default_factory=dict)  # further #SBATCH --key=value lines
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, source a venv)
    max_jobs: int = 64  # jobs of one array running at once (--array=...%N)


SLURM_KEYS = ("partition", "account", "qos", "gpus_per_job", "cpus_per_job", "mem", "time", "constraint", "sbatch", "setup", "max_jobs")


def parse_slurm(value: Any, where: str) -> SlurmSettings:
    """The ``slurm:`` section, checked: each problem names ``<file>: slurm.<key>``."""
    if value is None:
        return SlurmSettings()
    if not isinstance(value, dict):
        raise RelbenchError(f"{where}: expected a mapping of {', '.join(SLURM_KEYS)}")
    unknown = sorted(set(value) - set(SLURM_KEYS))
    if unknown:
        raise RelbenchError(f"{where}.{unknown[0]}: unknown key; expected some of {', '.join(SLURM_KEYS)}")
    out: dict[str, Any] = {}
    for key in ("partition", "account", "qos", "mem", "constraint"):
        if key in value:
            if not isinstance(value[key], (str, int)) or isinstance(value[key], bool) or not str(value[key]).strip():
                raise RelbenchError(f"{where}.{key}: expected a non-empty string, got {value[key]!r}")
            out[key] = str(value[key])
    for key, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("time", 1), ("max_jobs", 1)):
        if key in value:
            number = value[key]
            if not isinstance(number, int) or isinstance(number, bool) or number < low:
                raise RelbenchError(f"{where}.{key}: expected an integer >= {low}, got {number!r}")
            out[key] = number
    if "sbatch" in value:
        extra = value["sbatch"]
        if not isinstance(extra, dict) or not all(isinstance(k, str) and k and not k.startswith("-") for k in extra):
            raise RelbenchError(f"{where}.sbatch: expected a mapping of sbatch option (without --) -> value, e.g. {{reservation: gpu-week}}")
        out["sbatch"] = {k: str(v) for k, v in extra.items()}
    if "setup" in value:
        lines = value["setup"]
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise RelbenchError(f"{where}.setup: expected a list of shell lines")
        out["setup"] = tuple(lines)
    return SlurmSettings(**out)


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True)
class SweepJob:
    """One unit of work: a grid point's evaluation, or a trainable method's training."""

    key: str  # the grid point's folder below the sweep output ("demo/sdxl-1"), or "train/<method>"
    kind: str  # "evaluate" | "train"
    options: tuple["EvaluateOptions", ...]  # evaluate: its run; train: every run of the method
    depends: str | None = None  # key of the training job it waits for


def sweep_jobs(sweep: "Sweep", runs: list["PlannedRun"]) -> list[SweepJob]:
    """Training jobs first (one per method that trains on first need), then one job per grid point."""
    from relbench.method import Method
    from relbench.methods import METHODS
    from relbench.sweep import evaluate_options

    trains = {r.method for r in runs if METHODS.get(r.method).train_ahead is not Method.train_ahead}
    jobs = [SweepJob(f"train/{name}", "train", tuple(evaluate_options(sweep, r) for r in runs if r.method == name))
            for name in sorted(trains)]
    for run in runs:
        jobs.append(SweepJob(point_key(sweep, run), "evaluate", (evaluate_options(sweep, run),),
                             f"train/{run.method}" if run.method in trains else None))
    return jobs


def point_key(sweep: "Sweep", run: "PlannedRun") -> str:
    return run.output.relative_to(sweep.output).as_posix()


def run_job(job: SweepJob) -> str:
    """What a job runs (in a local worker; on a Slurm node through ``run_slurm_job``)."""
    if job.kind == "train":
        train_ahead(list(job.options))
    else:
        from relbench.runner import evaluate

        evaluate(replace(job.options[0], progress=False))
    return job.key


def train_ahead(options: list["EvaluateOptions"]) -> None:
    """Train what each run's method needs for its cases (cached: a second point with the same
    training settings finds the weights trained)."""
    from relbench.runner import SubjectInputs, build_method, plan_evaluation

    for run in options:
        plan = plan_evaluation(run)
        inputs = SubjectInputs(plan.benchmark, plan.data_root)
        for method_plan in plan.methods:
            method = build_method(method_plan.name, plan.context, method_plan.settings, plan.benchmark, plan.data_root)
            method.train_ahead([inputs.request(case, plan.seeds[0], plan.width, plan.height) for case in plan.cases])
            del method


def run_slurm_job(job: SweepJob) -> str:
    """A job on a Slurm node: its tasks (one per GPU) set up as one distributed run first."""
    _export_distributed()
    return run_job(job)


def _export_distributed() -> None:
    """A Slurm job with several tasks (one per GPU): the variables torch.distributed and
    Accelerate read, so ``runner.Shard`` shards the run over the tasks. Every task keeps the job's
    GPUs visible; Accelerate gives task k the device cuda:LOCAL_RANK."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "WORLD_SIZE" not in os.environ:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# ---------------------------------------------------------------------------------------------
# Progress of a run folder


def run_progress(root: Path) -> dict[str, tuple[int, int]]:
    """method -> (items done, items planned) of one run folder, from run.json and its rows: an item
    is done when its row is stored (in samples.jsonl or a shard file) with every metric run.json names."""
    from relbench.runstore import RunStore, read_rows

    store = RunStore(root)
    try:
        run = store.read_run()
    except RelbenchError:
        return {}
    if not run:
        return {}
    items = {(case, seed) for case in run.get("cases", []) for seed in run.get("seeds", [])}
    metrics = set(run.get("metrics", {}))
    done: dict[str, set[tuple[str, int]]] = {name: set() for name in run.get("methods", {})}
    for path in [store.samples_jsonl, *store.shard_paths()]:
        if not path.is_file():
            continue
        for row in read_rows(path):
            method = run.get("methods", {}).get(row.get("method"))
            if method and row.get("settings_hash") == method.get("settings_hash") and metrics <= set(row.get("metrics") or {}):
                done[row["method"]].add((row.get("case_id"), row.get("seed")))
    return {name: (len(keys & items), len(items)) for name, keys in done.items()}


def partial_notes(run_dirs: list[Path]) -> list[str]:
    """One line per run folder with items still missing (a sweep whose jobs are running)."""
    notes = []
    for root in run_dirs:
        for method, (done, total) in sorted(run_progress(root).items()):
            if done < total:
                notes.append(f"partial: {root}: {method}: {done} of {total} items done; the report shows the done rows only")
    return notes


def point_done(run: "PlannedRun") -> tuple[int, int]:
    done, _ = run_progress(run.output).get(run.method, (0, 0))
    return done, run.n_images


# ---------------------------------------------------------------------------------------------
# The record of submitted jobs


def read_jobs(sweep: "Sweep") -> dict[str, dict[str, Any]]:
    path = sweep.output / JOBS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: unreadable ({exc}); delete it to forget the submitted jobs") from exc
    return data if isinstance(data, dict) else {}


def write_jobs(sweep: "Sweep", jobs: dict[str, dict[str, Any]]) -> None:
    from relbench.runstore import atomic_write_json

    atomic_write_json(sweep.output / JOBS_FILE, jobs)


def squeue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Slurm job id (``123`` or ``123_4``) -> (state, reason), for the jobs still in the queue."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "--jobs", ",".join(sorted({i.split('_')[0] for i in job_ids}))],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RelbenchError(f"squeue: cannot ask Slurm for the sweep's jobs ({exc})") from exc
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise RelbenchError(f"squeue: {out.stderr.strip() or 'failed'}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else "")
    return states


@dataclass(frozen=True)
class PointStatus:
    key: str
    state: str  # one of STATES
    done: int
    total: int
    job: str | None = None  # the job id (Slurm) or "local"
    detail: str = ""  # the last lines of a failed job's log, or what it waits for


def sweep_status(sweep: "Sweep", runs: list["PlannedRun"]) -> list[PointStatus]:
    """Each grid point's state, from its run store and the record of submitted jobs (and squeue)."""
    record = read_jobs(sweep)
    slurm_ids = [str(entry["job_id"]) for entry in record.values() if entry.get("launcher") == "slurm"]
    queue = squeue_states(slurm_ids) if slurm_ids else {}
    out = []
    for run in runs:
        key = point_key(sweep, run)
        done, total = point_done(run)
        entry = record.get(key)
        if done >= total:
            out.append(PointStatus(key, "done", done, total, _job_label(entry)))
            continue
        if entry is None:
            out.append(PointStatus(key, "pending", done, total, None, "not started"))
            continue
        job_id = str(entry.get("job_id"))
        if entry.get("launcher") == "slurm":
            state, reason = queue.get(job_id, (None, ""))
            if state in ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"):
                shown = reason if reason and reason != "None" else ""  # e.g. Dependency, Resources, Priority
                out.append(PointStatus(key, "pending", done, total, job_id, state.lower() if state != "PENDING" else shown))
            elif state is not None:
                out.append(PointStatus(key, "running", done, total, job_id))
            else:
                out.append(PointStatus(key, "failed", done, total, job_id, _log_tail(entry)))
        elif entry.get("state") == "running" and _alive(entry.get("pid")):
            out.append(PointStatus(key, "running", done, total, "local"))
        else:
            out.append(PointStatus(key, "failed", done, total, "local", entry.get("error") or "stopped before it finished"))
    return out


def _job_label(entry: dict[str, Any] | None) -> str | None:
    if entry is None:
        return None
    return str(entry.get("job_id")) if entry.get("launcher") == "slurm" else "local"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_tail(entry: dict[str, Any]) -> str:
    lines: list[str] = []
    for name in ("stderr", "stdout"):
        path = Path(str(entry.get(name, "")))
        if path.is_file():
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                break
    return "\n".join(lines[-LOG_LINES:]) if lines else "no log (the job did not start, or was cancelled before)"


def format_status(points: list[PointStatus]) -> list[str]:
    lines = []
    for p in points:
        job = f" [{p.job}]" if p.job else ""
        failed = p.state == "failed"  # its log's last lines below it; other states' detail in brackets
        lines.append(f"{p.state:8} {p.key}: {p.done}/{p.total} items{job}" + (f" ({p.detail})" if p.detail and not failed else ""))
        if failed:
            lines.extend(f"    | {line}" for line in p.detail.splitlines())
    counts = {state: sum(p.state == state for p in points) for state in STATES}
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return lines


def select_jobs(sweep: "Sweep", runs: list["PlannedRun"], jobs: list[SweepJob], retry_failed: bool) -> list[SweepJob]:
    """The jobs to start now: grid points not done and not queued or running (with ``retry_failed``
    only the failed ones), and the training jobs those need."""
    wanted = {"failed"} if retry_failed else {"failed", "pending"}
    status = {p.key: p for p in sweep_status(sweep, runs)}
    queued = {k for k, p in status.items() if p.state == "pending" and p.job is not None}
    todo = {k for k, p in status.items() if p.state in wanted and k not in queued}
    evaluations = [j for j in jobs if j.kind == "evaluate" and j.key in todo]
    needed = {j.depends for j in evaluations if j.depends}
    return [j for j in jobs if j.kind == "train" and j.key in needed] + evaluations


# ---------------------------------------------------------------------------------------------
# Launchers


def launch_local(sweep: "Sweep", jobs: list[SweepJob], max_parallel: int) -> list[str]:
    """Run ``jobs`` in ``max_parallel`` worker processes (trainings first); returns the failures."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    record = read_jobs(sweep)
    gpus = _local_gpus(sweep.device)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared with this one
    slots = context.Queue()
    for i in range(max_parallel):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    failures: list[str] = []
    with ProcessPoolExecutor(max_workers=max_parallel, mp_context=context, initializer=_take_gpu, initargs=(slots,)) as pool:
        for phase in ("train", "evaluate"):
            failed_trainings = {f.split(":")[0] for f in failures}
            batch = [j for j in jobs if j.kind == phase]
            futures = {}
            for job in batch:
                if job.depends in failed_trainings:
                    record[job.key] = {"launcher": "local", "state": "failed", "error": f"{job.depends} failed"}
                    failures.append(f"{job.key}: {job.depends} failed")
                    continue
                futures[pool.submit(run_job, job)] = job
                record[job.key] = {"launcher": "local", "state": "running", "pid": os.getpid(), "started": time.time()}
            write_jobs(sweep, record)
            for future in as_completed(futures):
                job = futures[future]
                try:
                    future.result()
                    record[job.key] = {"launcher": "local", "state": "done"}
                except Exception as exc:  # one failed point does not stop the others; all are listed at the end
                    message = " ".join(str(exc).split())[:500] or type(exc).__name__
                    record[job.key] = {"launcher": "local", "state": "failed", "error": message}
                    failures.append(f"{job.key}: {message}")
                write_jobs(sweep, record)
    return failures


def _local_gpus(device: str) -> list[str]:
    if device != "auto":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _take_gpu(slots: Any) -> None:
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def slurm_executor(folder: Path, slurm: SlurmSettings) -> Any:
    """A submitit SlurmExecutor with the sweep's ``slurm:`` settings (one task per GPU)."""
    try:
        import submitit
    except ImportError as exc:
        raise RelbenchError("launcher slurm needs submitit: pip install 'relbench[slurm]'") from exc
    try:
        executor = submitit.SlurmExecutor(folder=str(folder))
    except RuntimeError as exc:  # no srun on this machine
        raise RelbenchError(f"launcher slurm: {exc}") from exc
    tasks = max(1, slurm.gpus_per_job)
    params: dict[str, Any] = {
        "job_name": "relbench-sweep", "time": slurm.time, "ntasks_per_node": tasks, "nodes": 1,
        "array_parallelism": slurm.max_jobs, "stderr_to_stdout": False,
    }
    if slurm.gpus_per_job:
        params["gpus_per_node"] = slurm.gpus_per_job
    if slurm.cpus_per_job:
        params["cpus_per_task"] = max(1, slurm.cpus_per_job // tasks)
    for key in ("partition", "account", "qos", "mem", "constraint"):
        if getattr(slurm, key) is not None:
            params[key] = getattr(slurm, key)
    if slurm.setup:
        params["setup"] = list(slurm.setup)
    if slurm.sbatch:
        params["additional_parameters"] = dict(slurm.sbatch)
    executor.update_parameters(**params)
    return executor


def launch_slurm(sweep: "Sweep", slurm: SlurmSettings, jobs: list[SweepJob]) -> dict[str, str]:
    """Submit ``jobs``: each training job alone, then the evaluation jobs as arrays (those of a
    trainable method after its training job). Returns key -> Slurm job id, also recorded."""
    folder = sweep.output / SLURM_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    executor = slurm_executor(folder / "%j", slurm)
    record = read_jobs(sweep)
    submitted: dict[str, str] = {}

    def note(job: SweepJob, handle: Any) -> None:
        submitted[job.key] = str(handle.job_id)
        record[job.key] = {"launcher": "slurm", "job_id": str(handle.job_id), "stdout": str(handle.paths.stdout),
                           "stderr": str(handle.paths.stderr), "submitted": time.time(), "depends": job.depends}

    def submit(batch: list[SweepJob], dependency: str | None) -> None:
        extra = dict(slurm.sbatch)
        if dependency:  # a failed training cancels the jobs waiting for it (they show as failed)
            extra.update({"dependency": f"afterok:{dependency}", "kill-on-invalid-dep": "yes"})
        executor.update_parameters(additional_parameters=extra)
        try:
            if len(batch) == 1:
                handles = [executor.submit(run_slurm_job, batch[0])]
            else:
                handles = executor.map_array(run_slurm_job, batch)
        except Exception as exc:  # sbatch refused (a partition or account that does not exist, ...)
            write_jobs(sweep, record)
            raise RelbenchError(f"sbatch: {' '.join(str(exc).split())[:400]}") from exc
        for job, handle in zip(batch, handles):
            note(job, handle)

    trainings = [j for j in jobs if j.kind == "train"]
    for job in trainings:
        submit([job], None)
    groups: dict[str | None, list[SweepJob]] = {}
    for job in (j for j in jobs if j.kind == "evaluate"):
        groups.setdefault(job.depends, []).append(job)
    for depends, batch in groups.items():
        dependency = submitted.get(depends) if depends else None
        if depends and dependency is None:
            # Its training is not in this submission: recorded from an earlier one, still queued?
            entry = record.get(depends, {})
            job_id = entry.get("job_id")
            dependency = str(job_id) if job_id and squeue_states([str(job_id)]) else None
        submit(batch, dependency)
    write_jobs(sweep, record)
    return submitted
