"""The ``relbench`` command line (Typer).

Start-up imports only Typer and relbench's light core: torch, diffusers and transformers are
imported inside the commands that need them, so ``relbench --help`` stays well under a second.
User mistakes end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from relbench.errors import MAX_LINE_CHARS, Interrupted, RelbenchError, clip
from relbench.profiles import DEFAULT_PROFILE, FULL_MODELS, PROFILES

def _name_placeholders(command: object) -> None:
    """Placeholders from names in ``--help``: ``--method METHOD``, ``relbench train METHOD``.

    Typer shows a value's Python type (``--method <list[str]>``) and a required argument in braces
    (``{method}``); an option or argument without its own ``metavar`` gets its name in capitals
    instead (``...`` for an argument taking several). Applied to a command and every subcommand.
    """
    for param in getattr(command, "params", ()):
        if param.metavar is not None or getattr(param, "is_flag", False) or param.name is None:
            continue
        name = param.name.rstrip("_").upper()
        if param.param_type_name == "argument":
            label = f"{name}..." if param.nargs != 1 else name
            param.get_usage_pieces = lambda ctx, label=label: [label]  # not Typer's "{name}"
            param.display_type_rich = lambda ctx: None  # the name alone, not "METHOD <str>"
        param.metavar = name
    for sub in getattr(command, "commands", {}).values():
        _name_placeholders(sub)


class _Group(typer.core.TyperGroup):
    """The root command group: every command it hands out has named placeholders (``_name_placeholders``)."""

    def get_command(self, ctx: typer.Context, cmd_name: str) -> object:
        command = super().get_command(ctx, cmd_name)
        _name_placeholders(command)
        return command


app = typer.Typer(
    name="relbench",
    help="Benchmark and evaluation toolkit for relation-aware customized image generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=_Group,
)
methods_app = typer.Typer(help="Generation methods.", no_args_is_help=True)
metrics_app = typer.Typer(help="Metrics.", no_args_is_help=True)
data_app = typer.Typer(help="Benchmarks and their files.", no_args_is_help=True)
app.add_typer(methods_app, name="methods")
app.add_typer(metrics_app, name="metrics")
app.add_typer(data_app, name="data")
models_app = typer.Typer(help="Pretrained models of the full profile: list, download (login node), check (offline GPU node).", no_args_is_help=True)
app.add_typer(models_app, name="models")

DataRootOption = Annotated[
    Optional[Path],
    typer.Option("--data-root", help="Folder holding benchmark files (default: $RELBENCH_DATA_ROOT, else ~/.cache/relbench/data)."),
]

PROFILE_METAVAR = "|".join(PROFILES)
DEVICE_METAVAR = "auto|cpu|cuda|cuda:N|mps"  # what relbench.profiles.check_device accepts
DEVICE_HELP = "'auto' (a GPU when there is one, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'."

# The model keys come from their owner, relbench.profiles (keys without a pretrained default: README).
MODEL_HELP = f"KEY=HUB_ID_OR_PATH[@REVISION] to replace a pretrained model (keys: {', '.join(FULL_MODELS)})."


def _split(values: list[str] | None) -> list[str]:
    """Accept both repeated options and comma-separated lists."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _names(values: list[str] | None, option: str) -> list[str] | None:
    """The names of a list option, None when it is not given; given but empty (`-m ""`) is a
    mistake, not "all"."""
    if values is None:
        return None
    names = _split(values)
    if not names:
        raise RelbenchError(f"{option}: empty; give names, comma-separated, or leave the option out")
    return names


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _version_callback(value: bool) -> None:
    if value:
        import relbench

        typer.echo(f"relbench {relbench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Benchmark and evaluation toolkit for relation-aware customized image generation."""


@app.command()
def evaluate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (created; re-running resumes it).")],
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method name(s), comma-separated or repeated, or 'all'.")] = ["all"],
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Built-in benchmark (NAME, its latest version, or NAME@VERSION: relationbench@1) or path to a spec file.")] = "demo",
    profile: Annotated[str, typer.Option("--profile", "-p", metavar=PROFILE_METAVAR, help="'tiny' (random tiny models, offline) or 'full' (pretrained).")] = DEFAULT_PROFILE,
    metrics: Annotated[Optional[list[str]], typer.Option("--metrics", help="Metric name(s), 'all' (default: every metric the profile can run) or 'none'.")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds; one image per (method, case, seed).")] = "0",
    resolution: Annotated[Optional[int], typer.Option("--resolution", help="Output width and height in pixels (default: 64 tiny, 1024 full).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N cases (after --relations).")] = None,
    relations: Annotated[Optional[list[str]], typer.Option("--relations", help="Only the cases of these relation ids (comma-separated or repeated).")] = None,
    stage: Annotated[str, typer.Option("--stage", metavar="all|generate|score", help="'all' (generate and score), 'generate' (images only) or 'score' (score stored images, e.g. with a new metric; never regenerates).")] = "all",
    data_root: DataRootOption = None,
    device: Annotated[str, typer.Option("--device", metavar=DEVICE_METAVAR, help=DEVICE_HELP)] = "auto",
    model: Annotated[Optional[list[str]], typer.Option("--model", help=MODEL_HELP)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="METHOD.SETTING=VALUE, e.g. sdxl.num_inference_steps=50.")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", help="dreamrelation's relation LoRA: FILE (every relation) or RELATION=FILE, repeatable.")] = None,
    judge_option: Annotated[Optional[list[str]], typer.Option("--judge-option", help="KEY=VALUE for an API judge's transport (not its answers): timeout, attempts, retry_budget, concurrency; repeatable.")] = None,
    embedder_dtype: Annotated[Optional[str], typer.Option("--embedder-dtype", metavar="float32|tf32|bfloat16|float16", help="Precision of CLIP, DINO and the identity models; it moves their scores, is recorded in each value and fixed for the run folder (default: $RELBENCH_EMBEDDER_DTYPE, else float32).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Generate and score images for every (method, case, seed); resumable."""
    from relbench.plugins import add_option_settings
    from relbench.profiles import parse_model_overrides
    from relbench.runner import EvaluateOptions, evaluate as run_evaluate

    try:
        seed_list = tuple(int(s) for s in _split([seeds]))
    except ValueError:
        raise RelbenchError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    method_overrides = _parse_sets(set_)
    add_option_settings(method_overrides, "--lora", lora)  # the setting of methods declaring --lora
    options = EvaluateOptions(
        benchmark=benchmark, output=output, methods=_names(method, "--method") or ["all"], metrics=_names(metrics, "--metrics"),
        profile=profile, seeds=seed_list, resolution=resolution, data_root=data_root, device=device,
        model_overrides=parse_model_overrides(model), method_overrides=method_overrides, limit=limit,
        relations=_names(relations, "--relations"), stage=stage, progress=not quiet,
        judge_options=_parse_judge_options(judge_option), embedder_dtype=embedder_dtype,
    )
    try:
        summary = run_evaluate(options)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; run the same command again to resume {output}") from None
    if summary.rank != 0:
        return  # in a distributed run the main process reports the merged result
    typer.echo(
        f"{summary.output}: {summary.rows} rows ({summary.generated} images generated, {summary.reused_images} reused, "
        f"{summary.skipped} already done, {summary.scored} stored images scored); methods: {', '.join(summary.methods) or '-'}; "
        f"metrics: {', '.join(summary.metrics) or 'none'}"
    )
    from relbench.reports.terminal import print_run_summary

    print_run_summary(summary.output, typer.echo)  # the leaderboard table, failed items, the next command


def _parse_judge_options(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise RelbenchError(f"--judge-option {value!r}: expected KEY=VALUE, e.g. timeout=120")
        out[key.strip()] = raw.strip()
    return out


@app.command()
def generate(
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")],
    method: Annotated[str, typer.Option("--method", "-m", help="Method name.")],
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Built-in benchmark (NAME or NAME@VERSION) or spec path (with --case).")] = "demo",
    case: Annotated[Optional[str], typer.Option("--case", help="A case id of the benchmark.")] = None,
    image: Annotated[Optional[list[str]], typer.Option("--image", help="Without --case: one reference image per subject (repeat).")] = None,
    phrase: Annotated[Optional[list[str]], typer.Option("--phrase", help="Without --case: each subject's class noun (repeat, same order).")] = None,
    box: Annotated[Optional[list[str]], typer.Option("--box", help="Without --case: each subject's box x0,y0,x1,y1 normalised (repeat).")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Without --case: the prompt.")] = None,
    relation: Annotated[Optional[str], typer.Option("--relation", help="Without --case: the relation id (selects a dreamrelation LoRA) and phrase.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    profile: Annotated[str, typer.Option("--profile", "-p", metavar=PROFILE_METAVAR, help="'tiny' (random tiny models, offline) or 'full' (pretrained).")] = DEFAULT_PROFILE,
    resolution: Annotated[Optional[int], typer.Option("--resolution")] = None,
    data_root: DataRootOption = None,
    device: Annotated[str, typer.Option("--device", metavar=DEVICE_METAVAR, help=DEVICE_HELP)] = "auto",
    model: Annotated[Optional[list[str]], typer.Option("--model", help=MODEL_HELP)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="METHOD.SETTING=VALUE.")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", help="dreamrelation's LoRA: FILE or RELATION=FILE.")] = None,
) -> None:
    """Generate one image, for a benchmark case or for your own images, prompt and boxes."""
    from relbench.data_root import resolve_data_root
    from relbench.generate import generate_one
    from relbench.plugins import add_option_settings
    from relbench.profiles import parse_model_overrides

    overrides = _parse_sets(set_)
    add_option_settings(overrides, "--lora", lora)
    path = generate_one(
        method=method, output=output, benchmark=benchmark, case_id=case, images=image or [], phrases=phrase or [],
        boxes=box or [], prompt=prompt, relation=relation, seed=seed, profile=profile, resolution=resolution,
        data_root=resolve_data_root(data_root), device=device, model_overrides=parse_model_overrides(model),
        settings=overrides.get(method, {}),
    )
    typer.echo(f"image: {path}")


def _parse_sets(values: list[str] | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for value in values or []:
        target, sep, raw = value.partition("=")
        method_name, dot, key = target.partition(".")
        if not sep or not dot or not method_name or not key:
            raise RelbenchError(f"--set {value!r}: expected METHOD.SETTING=VALUE, e.g. sdxl.guidance_scale=7.5")
        out.setdefault(method_name.strip(), {})[key.strip()] = raw
    return out


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="Method to train: one that `relbench methods list` marks `trains`.")],
) -> None:
    """Train a method (`relbench methods list` marks them; own options follow, e.g. `relbench train dreamrelation --help`)."""
    import importlib

    from relbench.methods import METHODS
    from relbench.registry import Registry

    if method in ("-h", "--help"):
        typer.echo(ctx.get_help())
        raise typer.Exit()
    # Each method's info names its trainer module (relbench.plugins.MethodInfo.trainer).
    trainers = {entry.name: entry.meta["trainer"] for entry in METHODS.entries() if entry.meta.get("trainer")}
    if method not in trainers:
        registry: Registry[str] = Registry("trainable method")
        for name, module_name in trainers.items():
            registry.register(name, f"{module_name}:main")
        raise RelbenchError(registry.unknown_message(method))
    module = importlib.import_module(trainers[method])
    try:
        path = module.main(list(ctx.args))
    except KeyboardInterrupt:
        raise Interrupted("interrupted; resume with the same command and --resume-from-checkpoint latest") from None
    typer.echo(f"weights: {path}")


HeadlineOption = Annotated[
    Optional[str],
    typer.Option("--headline", help="Metric to sort by and check CI overlap on (default: relation_vqa, else another relation judge metric, else clip_t)."),
]
CasesOption = Annotated[
    bool,
    typer.Option("--common-cases/--all-cases", help="Where methods scored different cases for a metric: means over the cases all of them scored (default), or over each one's own cases."),
]


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories, or folders holding runs (a sweep's output); merged like `relbench leaderboard`.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for index.html and leaderboard.csv (default: the first run's report/).")] = None,
    formats: Annotated[Optional[str], typer.Option("--format", help="Also write the tables next to the page: csv, parquet or csv,parquet.")] = None,
    headline: HeadlineOption = None,
    common_cases: CasesOption = True,
    self_contained: Annotated[bool, typer.Option("--self-contained", help="Embed downscaled images in index.html: one file to mail or attach (default: link the run's images; move the report folder together with the run folder).")] = False,
) -> None:
    """Write the HTML report and leaderboard CSV of one or more runs."""
    from relbench.reports.html import build_report

    found = _expand_run_dirs(list(run_dirs))
    files = build_report(found, output, formats, headline, "common" if common_cases else "all", self_contained=self_contained)
    for note in files.notes:  # the headline, differing case sets, runs a sweep's jobs are still filling
        typer.echo(note)
    typer.echo(f"leaderboard: {files.leaderboard}")
    typer.echo(f"report: {files.page}")
    for path in files.exports:
        typer.echo(f"table: {path}")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="A sweep YAML/JSON file (keys: README, Sweep files); `relbench sweep status FILE` shows each grid point's state.")],
    status_file: Annotated[Optional[Path], typer.Argument(hidden=True)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs and their size; run nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    launcher: Annotated[Optional[str], typer.Option("--launcher", help="local (this machine) or slurm (submit with submitit; the sweep file's slurm: section). Default: the sweep file's launcher, else local.")] = None,
    max_parallel: Annotated[Optional[int], typer.Option("--max-parallel", min=1, help="Local launcher: grid points run at once, one GPU each (default: the sweep file's max_parallel, else 1).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Start again only the grid points whose job failed or was cancelled.")] = False,
) -> None:
    """Run a grid of evaluations (methods x settings x benchmarks) into one output tree; resumable."""
    from relbench.sweep import load_sweep, plan, run_sweep
    from relbench import sweep_launch

    if status_file is not None:
        if sweep_file != Path("status"):
            raise RelbenchError(f"{status_file}: unexpected argument; `relbench sweep FILE` or `relbench sweep status FILE`")
        spec = load_sweep(status_file)
        for line in sweep_launch.format_status(sweep_launch.sweep_status(spec, plan(spec))):
            typer.echo(line)
        return
    spec = load_sweep(sweep_file)
    runs = plan(spec)
    chosen = launcher or spec.launcher
    if chosen not in sweep_launch.LAUNCHERS:
        raise RelbenchError(f"--launcher: expected one of {', '.join(sweep_launch.LAUNCHERS)}, got {chosen!r}")
    parallel = max_parallel or spec.max_parallel
    for run in runs:
        typer.echo(f"{run.output}: {run.label()}: {run.n_cases} cases x {run.n_seeds} seeds = {run.n_images} images")
    typer.echo(f"{len(runs)} runs, {sum(r.n_images for r in runs)} images, profile {spec.profile}, output {spec.output}")
    if dry_run:
        return
    if chosen == "slurm" or parallel > 1 or retry_failed:
        _launch_sweep(spec, runs, chosen, parallel, retry_failed, sweep_file)
        return
    try:
        summaries = run_sweep(spec, runs, progress=not quiet)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; run the same command again to resume {sweep_file}") from None
    if summaries and summaries[0].rank == 0:
        typer.echo(f"{spec.output}: {sum(s.generated for s in summaries)} images generated; `relbench report {spec.output}` merges the runs")


def _launch_sweep(spec: Any, runs: list[Any], launcher: str, parallel: int, retry_failed: bool, sweep_file: Path) -> None:
    """The sweep's jobs (relbench.sweep_launch) submitted to Slurm or run in local workers."""
    from relbench import sweep_launch

    try:
        spec.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RelbenchError(f"{sweep_file}: output: cannot create {spec.output}: {exc.strerror or exc}") from exc
    jobs = sweep_launch.select_jobs(spec, runs, sweep_launch.sweep_jobs(spec, runs), retry_failed)
    if not jobs:
        typer.echo(f"nothing to start: every grid point is done{'' if retry_failed else ', queued or running'} (`relbench sweep status {sweep_file}`)")
        return
    if launcher == "slurm":
        submitted = sweep_launch.launch_slurm(spec, spec.slurm, jobs)
        for key, job_id in submitted.items():
            typer.echo(f"submitted {key}: job {job_id}")
        typer.echo(f"{len(submitted)} jobs submitted; `relbench sweep status {sweep_file}` follows them, `relbench report {spec.output}` merges the done rows")
        return
    try:
        failures = sweep_launch.launch_local(spec, jobs, parallel)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; run the same command again to resume {sweep_file}") from None
    if failures:
        raise RelbenchError(f"{len(failures)} of {len(jobs)} jobs failed ({failures[0]}); `relbench sweep status {sweep_file}` lists them, --retry-failed starts them again")
    typer.echo(f"{spec.output}: {len(jobs)} jobs done; `relbench report {spec.output}` merges the runs")


def _expand_run_dirs(paths: list[Path]) -> list[Path]:
    """A run directory stays; a folder holding runs (a sweep's output) gives every run below it."""
    from relbench.reports.tables import expand_run_dirs

    return expand_run_dirs(paths)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    a: Annotated[str, typer.Option("--a", "-a", help="METHOD or METHOD@HASH (a hash prefix is enough).")],
    b: Annotated[str, typer.Option("--b", "-b", help="METHOD or METHOD@HASH.")],
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Comma-separated metric names (default: all).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the per-metric table as CSV.")] = None,
    headline: HeadlineOption = None,
) -> None:
    """Compare two method configurations case by case (paired bootstrap CI, sign test)."""
    from relbench.analysis import compare as compare_table, load_runs
    from relbench.reports.compare import format_comparison, write_comparison_csv

    result = compare_table(load_runs(*run_dirs, wide=True), a, b, metrics=_split([metrics]) if metrics else None, headline=headline)
    typer.echo(format_comparison(result))
    if output:
        write_comparison_csv(result, output)
        typer.echo(f"comparison: {output}")


@app.command()
def leaderboard(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write.")],
    headline: HeadlineOption = None,
    common_cases: CasesOption = True,
) -> None:
    """Merge several runs into one leaderboard CSV (one row per method and settings, sorted by the headline metric)."""
    from relbench.analysis import leaderboard_board, load_runs
    from relbench.reports.leaderboard import save_csv

    board = leaderboard_board(load_runs(*run_dirs, wide=True), headline, "common" if common_cases else "all")
    save_csv(board.table, output)
    for note in board.notes():
        typer.echo(note)
    typer.echo(f"leaderboard: {output}")


@methods_app.command("list")
def methods_list() -> None:
    """Registered methods, the profiles they run in, and whether they train."""
    from relbench.methods import METHODS

    for entry in METHODS.entries():
        profiles = ",".join(entry.meta.get("profiles", ()))
        trains = "trains" if entry.meta.get("trains") else "-"
        typer.echo(f"{entry.name:<20} {profiles:<10} {trains:<7} {entry.summary}")


@metrics_app.command("list")
def metrics_list() -> None:
    """Registered metrics with their model, range and direction."""
    from relbench.metrics import METRICS

    for entry in METRICS.entries():
        direction = "higher is better" if entry.meta.get("higher_is_better") else "lower is better"
        low, high = entry.meta.get("range", ("?", "?"))
        typer.echo(f"{entry.name:<14} model={entry.meta.get('model', '-'):<9} range=[{low}, {high}] {direction:<16} {entry.summary}")


@data_app.command("list")
def data_list() -> None:
    """Built-in benchmarks, every version (`-b NAME@VERSION`; a plain NAME is its latest)."""
    from relbench.benchmarks import BENCHMARKS, builtin_spec_path, builtin_versions
    from relbench.spec import load_spec

    for name in BENCHMARKS.names():
        versions = builtin_versions(name)
        for version in versions:
            bench = load_spec(builtin_spec_path(f"{name}@{version}"))
            pairs = len({frozenset(case.subjects) for case in bench.cases})  # per-subject-set trainings
            latest = f" (= {name})" if version == versions[-1] else ""
            typer.echo(
                f"{name + '@' + version + latest:<34} {len(bench.cases):>4} cases {len(bench.relations):>3} relations "
                f"{len(bench.subjects):>3} subjects {pairs:>4} subject sets  {bench.description.splitlines()[0] if bench.description else ''}"
            )


SHOWN_PROBLEMS = 10  # `data validate` lists the first ones (a data root without images has hundreds)
MISSING_FILE_PROBLEMS = ("image not found", "keypoint file not found")  # relbench.spec's messages for a missing file


@data_app.command("validate")
def data_validate(
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", "-b", help="Built-in benchmark: NAME (its latest version) or NAME@VERSION.")] = None,
    spec: Annotated[Optional[Path], typer.Option("--spec", help="Path to a spec file (.yaml/.json).")] = None,
    data_root: DataRootOption = None,
    no_files: Annotated[bool, typer.Option("--no-files", help="Check the spec only, not the files it names.")] = False,
    triplets: Annotated[Optional[Path], typer.Option("--triplets", help="Check DreamRelation training triplets under this folder instead (<dir>/<relation>/prompts.json, videos/, masks/).")] = None,
    relation: Annotated[Optional[list[str]], typer.Option("--relation", help="With --triplets: only these relation folders.")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Also check that the reference files of this run folder's cases still have the sha256 its run.json recorded (what a resume checks).")] = None,
    all_problems: Annotated[bool, typer.Option("--all", help=f"List every problem (default: the first {SHOWN_PROBLEMS} and how many more).")] = False,
) -> None:
    """Check a spec and every file it names; each problem as `<file>: <field>: <problem>`, exit 2."""
    from relbench.benchmarks import builtin_spec_path
    from relbench.data_root import resolve_data_root
    from relbench.spec import validate_spec

    if triplets is not None:
        _validate_triplets(triplets, relation, all_problems)
        return
    if (benchmark is None) == (spec is None):
        raise RelbenchError("data validate: give exactly one of --benchmark NAME, --spec FILE or --triplets DIR")
    path = spec if spec is not None else builtin_spec_path(benchmark or "")
    root = resolve_data_root(data_root)
    bench, problems, n_images = validate_spec(path, root, files=not no_files)
    run_note = ""
    if run is not None and bench is not None and not problems:
        from relbench.input_files import check_run_inputs

        run_problems, run_note = check_run_inputs(run, bench, root)
        problems = [*problems, *run_problems]
    if problems:
        _echo_problems(problems, path, all_problems)
        if any(problem.message.startswith(MISSING_FILE_PROBLEMS) for problem in problems):
            _echo_err(f"fix: fetch the benchmark files with `relbench data download`, or point --data-root (or $RELBENCH_DATA_ROOT) "
                      f"at the folder that holds them (data root now: {root})")
        raise typer.Exit(2)
    assert bench is not None  # validate_spec reports a problem whenever it returns no benchmark
    checked = "files not checked" if no_files else f"{n_images} images checked in {root}"
    typer.echo(f"{bench.label}: {len(bench.cases)} cases, {len(bench.relations)} relations, {len(bench.subjects)} subjects, {checked}{run_note}")


def _echo_problems(problems: list, source: Path, show_all: bool) -> None:
    """The first SHOWN_PROBLEMS problems (every one with --all), how many more, and the count on stderr."""
    shown = problems if show_all else problems[:SHOWN_PROBLEMS]
    for problem in shown:
        typer.echo(str(problem))
    if len(problems) > len(shown):
        typer.echo(f"... and {len(problems) - len(shown)} more (--all lists every one)")
    _echo_err(f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} found")


def _validate_triplets(root: Path, relations: list[str] | None, show_all: bool = False) -> None:
    from relbench.methods.dreamrelation.data import read_relation_dir, validate_relation_dir

    names = _split(relations) or sorted(p.name for p in root.iterdir() if (p / "prompts.json").is_file()) if root.is_dir() else []
    if not names:
        raise RelbenchError(f"{root}: no relation folder with a prompts.json found")
    problems = [problem for name in names for problem in validate_relation_dir(root, name)]
    if problems:
        _echo_problems(problems, root, show_all)
        raise typer.Exit(2)
    counts = {name: len(read_relation_dir(root, name)) for name in names}
    typer.echo(f"{root}: " + ", ".join(f"{name}: {n} triplets" for name, n in counts.items()) + " checked")


@data_app.command("download")
def data_download(
    data_root: DataRootOption = None,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Sources, comma-separated or repeated: dreambench, dreamrelation, relationbench (default: dreambench, dreamrelation).")] = None,
    revision: Annotated[str, typer.Option("--revision", help="Hugging Face hub revision of the dataset repositories.")] = "main",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Fetch the real benchmark files into the data root; verified by checksum, resumable."""
    from relbench.data_root import resolve_data_root
    from relbench.download import download

    root = resolve_data_root(data_root)
    typer.echo(f"data root: {root}")
    try:
        download(_split(only) or None, root, hf_revision=revision, progress=not quiet, echo=typer.echo,
                 notice=None if quiet else _echo_err)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; run the same command again to resume the download") from None


ModelsMethodOption = Annotated[Optional[list[str]], typer.Option("--method", "-m", help="Methods whose models to take (comma-separated or repeated, or 'all').")]
ModelsMetricsOption = Annotated[Optional[list[str]], typer.Option("--metrics", help="Metrics whose models to take ('all' or 'none').")]
ModelsTrainOption = Annotated[Optional[list[str]], typer.Option("--train", help="Trainers (`relbench train NAME`) whose models to take.")]
ModelsKeyOption = Annotated[Optional[list[str]], typer.Option("--key", help="Model keys to take (relbench.profiles.FULL_MODELS, and dense_encoder).")]
ModelsVariantOption = Annotated[Optional[str], typer.Option("--variant", help="Weight variant of the keys that have one (default: what GPU runs read, fp16 for SDXL); 'none': the full-precision files (CPU runs, trainers).")]


def _model_needs(method: list[str] | None, metrics: list[str] | None, train: list[str] | None, key: list[str] | None,
                 variant: str | None) -> list:
    """What a models command selects; nothing selected: everything `evaluate --method all --metrics all` reads."""
    from relbench.models_manifest import command_requests, load_manifest, resolve

    manifest = load_manifest()
    methods, metric_names, trainers, keys = _split(method), _split(metrics), _split(train), _split(key)
    if not (methods or metric_names or trainers or keys):
        methods, metric_names = ["all"], ["all"]
    requests = command_requests(manifest, methods=methods, metrics=metric_names, trainers=trainers, keys=keys, variant=variant)
    return resolve(manifest, requests)


@models_app.command("list")
def models_list(method: ModelsMethodOption = None, metrics: ModelsMetricsOption = None, train: ModelsTrainOption = None,
                key: ModelsKeyOption = None, variant: ModelsVariantOption = None) -> None:
    """Every model a command reads: repo, revision, the files read, download size, GPU memory estimate."""
    from relbench.models_manifest import list_lines

    for line in list_lines(_model_needs(method, metrics, train, key, variant)):
        typer.echo(line)


@models_app.command("download")
def models_download(method: ModelsMethodOption = None, metrics: ModelsMetricsOption = None, train: ModelsTrainOption = None,
                    key: ModelsKeyOption = None, variant: ModelsVariantOption = None) -> None:
    """Fetch exactly the files a command reads into the HF cache (resumable; token from HF_TOKEN or `hf auth login`)."""
    from relbench.models_manifest import cache_dir, download, human_size

    needs = _model_needs(method, metrics, train, key, variant)
    typer.echo(f"HF cache: {cache_dir()}")
    try:
        download(needs, echo=typer.echo)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; run the same command again to resume the download") from None
    typer.echo(f"{len(needs)} models, {human_size(sum(n.size for n in needs))}: done; on the GPU node set HF_HUB_CACHE to this cache and HF_HUB_OFFLINE=1")


@models_app.command("check")
def models_check(method: ModelsMethodOption = None, metrics: ModelsMetricsOption = None, train: ModelsTrainOption = None,
                 key: ModelsKeyOption = None, variant: ModelsVariantOption = None) -> None:
    """Offline: whether the HF cache holds every file a command reads; each missing file listed, exit 2."""
    from relbench.models_manifest import cache_dir, missing_files, missing_message

    needs = _model_needs(method, metrics, train, key, variant)
    missing = missing_files(needs)
    for need, files in missing:
        for path in files:
            typer.echo(f"missing: {need.key}: {need.entry.repo}@{need.revision}: {path}")
    if missing:
        raise RelbenchError(missing_message(missing))
    typer.echo(f"{cache_dir()}: all {sum(len(n.files) for n in needs)} files of {len(needs)} model{'s' if len(needs) != 1 else ''} are cached")


judge_app = typer.Typer(help="The relation judge: check it on labelled images before trusting it.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")


def _judge_refs(values: list[str] | None) -> list[str | None]:
    """``--model judge=REF`` values (one or two judges); none: the profile's default judge."""
    refs: list[str | None] = []
    for value in values or []:
        key, sep, ref = value.partition("=")
        if key.strip() != "judge" or not sep or not ref.strip():
            raise RelbenchError(f"--model {value!r}: expected judge=HUB_ID_OR_PATH[@REVISION], judge=api:MODEL or judge=tiny:judge")
        refs.append(ref.strip())
    return refs or [None]


@judge_app.command("check")
def judge_check(
    model: Annotated[Optional[list[str]], typer.Option("--model", help="judge=HUB_ID_OR_PATH[@REVISION] or judge=api:MODEL; give it twice to compare two judges (Cohen's kappa). Default: the profile's judge.")] = None,
    set_file: Annotated[Optional[Path], typer.Option("--set", help="Judge set file (.yaml/.json; `relbench judge build-set` writes one to extend). Default: built from the DreamRelation triplets under the data root.")] = None,
    data_root: DataRootOption = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for check.json and the CSV tables.")] = Path("judge-check"),
    profile: Annotated[str, typer.Option("--profile", "-p", help="'tiny' (random tiny judge: numbers meaningless) or 'full'.")] = "tiny",
    device: Annotated[str, typer.Option("--device")] = "auto",
    judge_option: Annotated[Optional[list[str]], typer.Option("--judge-option", help="KEY=VALUE for an API judge's transport: timeout, attempts, retry_budget, concurrency.")] = None,
    bins: Annotated[int, typer.Option("--bins", help="Reliability bins of P(yes) (ECE).")] = 10,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ask every question again instead of reading the judge cache.")] = False,
) -> None:
    """Measure a relation judge on labelled images: accuracy, balanced accuracy, AUROC, calibration, CircularEval position bias."""
    from relbench.data_root import resolve_data_root
    from relbench.metrics.relation_judge.check import run_judge_check
    from relbench.metrics.relation_judge.judge_set import build_triplet_set, load_judge_set

    refs, options = _judge_refs(model), _parse_judge_options(judge_option)  # checked before any image is read
    root = resolve_data_root(data_root)
    judge_set = load_judge_set(set_file) if set_file is not None else build_triplet_set(root)
    result = run_judge_check(refs, judge_set, root, output, profile=profile, device=device, judge_options=options,
                             n_bins=bins, use_cache=not no_cache, echo=typer.echo)
    typer.echo(f"check: {', '.join(str(path) for path in result.written)}")


@judge_app.command("build-set")
def judge_build_set(
    output: Annotated[Path, typer.Option("--output", "-o", help="Judge set file to write (.yaml or .json).")],
    data_root: DataRootOption = None,
    relation: Annotated[Optional[list[str]], typer.Option("--relation", help="Only these DreamRelation relation folders (default: hug, shake when present).")] = None,
    absent: Annotated[int, typer.Option("--absent", help="Absent-class presence questions per motion image.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the absent classes and option orders.")] = 0,
) -> None:
    """Write the default judge set (from the DreamRelation triplets) as a file to extend with your own labelled images."""
    from relbench.data_root import resolve_data_root
    from relbench.metrics.relation_judge.judge_set import build_triplet_set, write_judge_set

    if absent < 0:
        raise RelbenchError(f"--absent: expected 0 or more, got {absent}")
    judge_set = build_triplet_set(resolve_data_root(data_root), relations=_names(relation, "--relation"), absent_per_image=absent, seed=seed)
    path = write_judge_set(judge_set, output)
    counts = judge_set.counts()
    typer.echo(f"{path}: {counts['items']} images, {counts['yes']} yes and {counts['no']} no questions, {counts['choice']} choice questions")


def main() -> None:
    """Console-script entry: user errors -> one line on stderr and exit 2 (130 when interrupted)."""
    import warnings

    # Warnings meant for users (a truncated row skipped, duplicates merged) as one plain line.
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        app()  # standalone mode: Typer reports usage errors itself (exit 2)
    except RelbenchError as exc:
        _echo_err(f"error: {clip(str(exc), MAX_LINE_CHARS)}")  # one line, however long the user's value
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
