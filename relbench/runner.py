"""``relbench evaluate``: generate an image per (method, case, seed), score it, store the row.

Flow: ``plan_evaluation`` turns the user's ``EvaluateOptions`` into an ``EvaluationPlan`` before
any model loads (load the benchmark and check the files its cases need, pick methods and metrics
for the profile, resolve each method's settings) -> ``run_plan`` opens the run store (lock, refuse
mismatched settings, find what is done) -> per method, built once (``build_method``: the method
lifecycle ``relbench generate`` shares), work through the pending items in batches: generate (or
reuse an image a killed run left on disk), score with every metric, append one ``Row`` per item.
Re-running the same command does only what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.benchmark import Benchmark, Case
from relbench.data_root import load_image, resolve_data_root
from relbench.errors import RelbenchError, output_errors
from relbench.input_files import input_digests
from relbench.options import check_resolution, check_seeds, size_multiple
from relbench.profiles import RunContext
from relbench.rows import Row, RowKey
from relbench.runstore import ImageSaver, RunStore, RunWriter, image_looks_whole, settings_hash

if TYPE_CHECKING:
    from concurrent.futures import Future

    from PIL import Image

    from relbench.method import GenerationRequest, Method
    from relbench.metrics.base import ScoringSample

# Output size per profile when --resolution is not given.
DEFAULT_RESOLUTION = {"tiny": 64, "full": 1024}


@dataclass
class EvaluateOptions:
    """What the user asked for (names, not yet checked): built by cli.py, relbench.sweep and tests."""

    benchmark: str
    output: Path
    methods: list[str]  # names, or ["all"]: every registered method that runs in the profile
    metrics: list[str] | None = None  # None or ["all"]: every metric the profile can run; ["none"]: no scoring
    profile: str = "tiny"
    seeds: tuple[int, ...] = (0,)
    resolution: int | None = None
    data_root: Path | None = None
    device: str = "auto"
    model_overrides: dict[str, str] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # method -> key -> value
    limit: int | None = None  # only the first N cases (after the relation filter)
    relations: list[str] | None = None  # only the cases of these relations
    stage: str = "all"  # "generate": images only; "score": score stored images; "all": both
    progress: bool = True
    judge_options: dict[str, str] = field(default_factory=dict)  # --judge-option KEY=VALUE (API judge transport)
    embedder_dtype: str | None = None  # --embedder-dtype (None: $RELBENCH_EMBEDDER_DTYPE, else float32)


@dataclass
class EvaluateSummary:
    output: Path
    methods: list[str]
    metrics: list[str]
    generated: int = 0
    reused_images: int = 0
    skipped: int = 0  # rows that were already there
    scored: int = 0  # stored rows scored by the scoring pass (new metrics, or --stage generate rows)
    regenerated: int = 0  # rows whose image was missing or unreadable, made again (part of generated)
    rows: int = 0
    rank: int = 0  # this process in a distributed run (counts above are this process's own)
    world: int = 1


def select_methods(names: Sequence[str], profile: str, overrides: dict[str, dict[str, str]] | None = None) -> list[str]:
    """``all``: every registered method that runs in the profile and whose required settings
    (registry ``requires``, e.g. dreamrelation's LoRAs) are given."""
    from relbench.methods import METHODS

    overrides = overrides or {}
    if list(names) == ["all"]:
        chosen = [
            e.name for e in METHODS.entries()
            if profile in e.meta.get("profiles", ()) and all(k in overrides.get(e.name, {}) for k in e.meta.get("requires", ()))
        ]
        if not chosen:
            raise RelbenchError(f"no registered method runs in the {profile!r} profile")
        return chosen
    chosen = []
    for name in names:
        entry = METHODS.entry(name)  # unknown names: suggestions
        if profile not in entry.meta.get("profiles", ()):
            raise RelbenchError(f"method {name!r} does not run in the {profile!r} profile (it runs in: {', '.join(entry.meta.get('profiles', ()))})")
        if name not in chosen:
            chosen.append(name)
    return chosen


def select_metrics(names: Sequence[str] | None, profile: str) -> list[str]:
    from relbench.metrics import METRICS

    if names is None or list(names) == ["all"]:
        return [e.name for e in METRICS.entries() if profile in e.meta.get("profiles", ())]
    if list(names) == ["none"]:
        return []
    chosen = []
    for name in names:
        entry = METRICS.entry(name)
        if profile not in entry.meta.get("profiles", ()):
            raise RelbenchError(f"metric {name!r} does not run in the {profile!r} profile")
        if name not in chosen:
            chosen.append(name)
    return chosen


def spec_digest(benchmark: Benchmark) -> str | None:
    import hashlib

    if benchmark.spec_path is None:
        return None
    return hashlib.sha256(benchmark.spec_path.read_bytes()).hexdigest()[:16]


def check_case_files(benchmark: Benchmark, cases: Sequence[Case], data_root: Path) -> None:
    """Fail before any model loads if an image a case needs is missing."""
    from relbench.data_root import resolve_path

    missing = []
    for sid in dict.fromkeys(s for case in cases for s in case.subjects):
        subject = benchmark.subjects[sid]
        for ref in (*subject.images, *subject.masks):
            path = resolve_path(ref, data_root, benchmark.spec_dir)
            if not path.is_file():
                missing.append(path)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RelbenchError(
            f"{missing[0]}: image not found{more} (data root: {data_root}); run `relbench data download` "
            f"or pass --data-root / set RELBENCH_DATA_ROOT"
        )


def method_config(method_cls: type["Method"], context: RunContext, overrides: dict[str, str], width: int, height: int) -> tuple[Any, dict[str, Any]]:
    """The method's settings object and the requested settings that identify its results."""
    import dataclasses

    settings = method_cls.settings_from_overrides(context, overrides)
    requested = {
        "method": method_cls.name,
        "profile": context.profile,
        "resolution": [width, height],
        "settings": dataclasses.asdict(settings),
        "models": {key: context.model(key).describe() for key in method_cls.model_keys},
        **method_cls.settings_fingerprint(settings),
    }
    if context.is_tiny:
        requested["tiny_seed"] = context.seed
    return settings, requested


@dataclass(frozen=True)
class MethodPlan:
    """One method of a run: its settings object, the requested settings that identify its results
    (run.json ``methods.<name>.settings``) and their hash (every row's ``settings_hash``)."""

    name: str
    settings: Any
    requested: dict[str, Any]
    settings_hash: str


@dataclass(frozen=True)
class EvaluationPlan:
    """What an evaluation computes, resolved from ``EvaluateOptions`` before any model loads."""

    output: Path
    context: RunContext
    benchmark: Benchmark
    cases: list[Case]
    seeds: tuple[int, ...]
    data_root: Path
    methods: list[MethodPlan]  # under --stage score they are not touched (run.json keeps its own)
    metrics: list[str]
    width: int
    height: int
    stage: str  # one of STAGES
    progress: bool

    def run_config(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """run.json's identity of this run (``relbench.runstore.CONFIG_KEYS`` and ``inputs``)."""
        return {
            "benchmark": {"name": self.benchmark.name, "version": self.benchmark.version, "spec_sha256": spec_digest(self.benchmark)},
            "profile": self.context.profile,
            "seeds": list(self.seeds),
            "resolution": [self.width, self.height],
            "cases": [case.id for case in self.cases],
            # The sha256 of every file the cases read (relbench.input_files): a resume with a
            # replaced reference image is refused.
            "inputs": inputs,
            # Generating computes no metric; a later --stage score adds the ones it computes.
            "metrics": {} if self.stage == "generate" else {name: {"model": _metric_model(self.context, name)} for name in self.metrics},
            # Scoring an existing run touches no method: its methods stay as run.json has them.
            "methods": {} if self.stage == "score" else {
                m.name: {"settings_hash": m.settings_hash, "settings": m.requested} for m in self.methods
            },
        }


def evaluate(options: EvaluateOptions) -> EvaluateSummary:
    shard = Shard.current()
    return run_plan(plan_evaluation(options, shard), shard)


def plan_evaluation(options: EvaluateOptions, shard: "Shard | None" = None) -> EvaluationPlan:
    """Check every name and input of ``options`` and resolve them, before any model loads."""
    from relbench.benchmarks import load_benchmark
    from relbench.methods import METHODS

    shard = shard or Shard()
    if options.stage not in STAGES:
        raise RelbenchError(f"--stage: expected one of {', '.join(STAGES)}, got {options.stage!r}")
    device = options.device
    if shard.world > 1 and device == "auto":
        device = str(_partial_state().device)  # each process its own GPU (or the CPU)
    from relbench.metrics.relation_judge.api import parse_transport_options
    from relbench.metrics.relation_judge.metric import check_judge_options

    context = RunContext(profile=options.profile, device=device, model_overrides=dict(options.model_overrides),
                         judge_options=parse_transport_options(options.judge_options), embedder_dtype=options.embedder_dtype)
    check_judge_options(context)  # before any model loads
    benchmark = load_benchmark(options.benchmark)
    cases = select_cases(benchmark, options.relations, options.limit)
    check_seeds(options.seeds)
    data_root = resolve_data_root(options.data_root)
    check_case_files(benchmark, cases, data_root)

    method_names = select_methods(options.methods, options.profile, options.method_overrides)
    metric_names = select_metrics(options.metrics, options.profile)
    for name in options.method_overrides:
        if name not in method_names:
            raise RelbenchError(f"--set {name}.*: method {name!r} is not being evaluated (methods: {', '.join(method_names)})")
    size = DEFAULT_RESOLUTION[options.profile] if options.resolution is None else options.resolution
    width = height = check_resolution(size, size_multiple(METHODS.get(name).resolution_multiple for name in method_names))

    methods: list[MethodPlan] = []
    for name in method_names:
        settings, requested = method_config(METHODS.get(name), context, options.method_overrides.get(name, {}), width, height)
        if options.stage != "score":
            METHODS.get(name).check_cases(settings, benchmark, cases, tuple(options.seeds))
        methods.append(MethodPlan(name, settings, requested, settings_hash(requested)))
    # Offline, the HF cache must hold every file the full profile's models read: one error listing them.
    from relbench.models_manifest import check_model_cache

    check_model_cache(
        context, [(m.name, METHODS.get(m.name).model_keys, m.settings) for m in methods] if options.stage != "score" else [],
        metric_names if options.stage != "generate" else [],
    )
    return EvaluationPlan(
        output=Path(options.output), context=context, benchmark=benchmark, cases=cases, seeds=tuple(options.seeds),
        data_root=data_root, methods=methods, metrics=metric_names, width=width, height=height,
        stage=options.stage, progress=options.progress,
    )


def run_plan(plan: EvaluationPlan, shard: "Shard | None" = None) -> EvaluateSummary:
    """Generate, score and store what ``plan`` asks for that the run directory does not hold yet."""
    from relbench.provenance import environment

    shard = shard or Shard()
    # Only the main process writes run.json, so only it hashes the reference files.
    config = plan.run_config(input_digests(plan.benchmark, plan.cases, plan.data_root) if shard.rank == 0 else {})
    store = RunStore(plan.output)
    summary = EvaluateSummary(plan.output, [m.name for m in plan.methods] if plan.stage != "score" else [],
                              list(plan.metrics) if plan.stage != "generate" else [])
    summary.rank, summary.world = shard.rank, shard.world
    scorer = Scorer(plan.context, plan.metrics, plan.benchmark, plan.data_root, plan.progress)
    env = environment(str(plan.context.torch_device()))
    from relbench.models_manifest import plan_hub_models

    env["hub_models"] = plan_hub_models(plan)  # the commit of each hub model read, from the HF cache
    if shard.world == 1:
        with store.open_for_writing(config, env) as writer:
            problem = _work(writer, plan, scorer, summary, shard)
            writer.compact()
            summary.rows = len(writer.rows)
            _record_metric_settings(store, writer, plan.metrics)
        if problem:
            raise problem
        return summary
    # Several processes (accelerate launch / torchrun): the main one checks the settings and merges
    # what a killed run left; each process then works on its share of the items and writes its own
    # shard; the main one merges the shards at the end.
    if shard.rank == 0:
        store.open_for_writing(config, env).close()
    shard.barrier()
    with store.open_shard(shard.rank) as writer:
        problem = _work(writer, plan, scorer, summary, shard)
    shard.barrier()
    if shard.rank == 0:
        with store.open_for_writing(config, env) as writer:  # absorbs the shards
            summary.rows = len(writer.rows)
            _record_metric_settings(store, writer, plan.metrics)
    shard.barrier()
    if problem:
        raise problem
    return summary


def build_method(name: str, context: RunContext, settings: Any, benchmark: Benchmark | None, data_root: Path) -> "Method":
    """The method lifecycle ``relbench evaluate`` and ``relbench generate`` share: build the method
    once with its settings, then hand it the benchmark its requests come from (``use_benchmark``,
    e.g. ReVersion's exemplars) before the caller asks for ``settings()`` and ``generate``.
    ``benchmark`` is None only for ad-hoc inputs (``relbench generate`` without ``--case``)."""
    from relbench.methods import METHODS

    method = METHODS.get(name)(context, settings)
    if benchmark is not None:
        method.use_benchmark(benchmark, data_root)
    return method


@dataclass(frozen=True)
class Shard:
    """This process's place in a distributed run; items are dealt round-robin by index."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Shard":
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        state = _partial_state()  # joins the process group torchrun / accelerate launch set up
        if state.num_processes != world:
            raise RelbenchError(f"WORLD_SIZE is {world} but the process group has {state.num_processes} processes")
        return cls(state.process_index, state.num_processes)

    def take(self, items: list[Any]) -> list[Any]:
        return items[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            _partial_state().wait_for_everyone()


def _partial_state() -> Any:
    """Accelerate's process state; on a machine without CUDA the processes talk over gloo (CPU)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _work(writer: RunWriter, plan: EvaluationPlan, scorer: "Scorer", summary: EvaluateSummary, shard: Shard) -> RelbenchError | None:
    """Generate the missing images (this process's share), then score rows that lack a metric.

    A stored row whose image is missing or unreadable is made again (image and scores) and its row
    replaced: by every start that generates, from a cheap check of every row (``image_looks_whole``),
    and when the scorer fails to decode one. Returns the error to raise once the rows are compacted:
    an unreadable image this command cannot make again (another method's, or ``--stage score``).
    """
    before = set(writer.rows)  # the rows earlier runs left
    if plan.stage != "score":
        todo = {(m.name, m.settings_hash, case.id, seed) for m in plan.methods for case in plan.cases for seed in plan.seeds}
        broken = {key for key in todo & before if not image_looks_whole(writer.store.root / writer.rows[key].image)}
        if broken and shard.rank == 0:
            _warn_regenerating(len(broken))
        pending = {
            m.name: [(case, seed) for case in plan.cases for seed in plan.seeds
                     if (key := (m.name, m.settings_hash, case.id, seed)) not in before or key in broken]
            for m in plan.methods
        }
        summary.skipped = sum(len(plan.cases) * len(plan.seeds) - len(p) for p in pending.values())
        mine = {name: shard.take(items) for name, items in pending.items()}
        summary.regenerated += sum((m.name, m.settings_hash, case.id, seed) in broken for m in plan.methods for case, seed in mine[m.name])
        _generate_pending(plan, scorer, writer, summary, mine)
    if plan.stage == "generate":
        return None
    # Failed results of rows made before this run are retried; this run's own failures are
    # left for the next run (its judge would only repeat the same failed answers now).
    summary.scored, unreadable = scorer.score_missing(writer, {case.id for case in plan.cases}, shard, retry=before)
    if not unreadable:
        return None
    ours = {(m.name, m.settings_hash) for m in plan.methods} if plan.stage == "all" else set()
    redo = [row for row in unreadable if (row.method, row.settings_hash) in ours]
    if redo:  # damaged in the middle: the cheap check passed, decoding failed
        _warn_regenerating(len(redo))
        summary.regenerated += len(redo)
        pending = {m.name: [(plan.benchmark.case(r.case_id), r.seed) for r in redo if r.method == m.name] for m in plan.methods}
        _generate_pending(plan, scorer, writer, summary, pending)
    left = [row for row in unreadable if (row.method, row.settings_hash) not in ours]
    if not left:
        return None
    first = left[0]
    more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
    return RelbenchError(
        f"{writer.store.root / first.image}: image of row ({first.method}, {first.case_id}, seed {first.seed}) is missing "
        f"or unreadable{more}; run `relbench evaluate` with method {first.method!r} and its settings again, without "
        "--stage score, to make it again (its other rows were scored)"
    )


def _warn_regenerating(count: int) -> None:
    import warnings

    warnings.warn(f"regenerating {count} image{'s' if count != 1 else ''} that {'are' if count != 1 else 'is'} "
                  "missing or unreadable (their rows are replaced)", stacklevel=3)


def _generate_pending(plan: EvaluationPlan, scorer: "Scorer", writer: RunWriter, summary: EvaluateSummary,
                      pending: dict[str, list[tuple[Case, int]]]) -> None:
    """Per method with items in ``pending`` (this process's share): build it once, generate them."""
    for method_plan in plan.methods:
        mine = pending.get(method_plan.name)
        if mine:
            method = build_method(method_plan.name, plan.context, method_plan.settings, plan.benchmark, plan.data_root)
            _generate(method, method_plan, mine, plan, scorer, writer, summary)
            del method  # free its models before the next method loads


STAGES = ("all", "generate", "score")


def select_cases(benchmark: Benchmark, relations: Sequence[str] | None, limit: int | None) -> list[Case]:
    """The benchmark's cases, restricted to some relations, then to the first ``limit``."""
    cases = list(benchmark.cases)
    if relations:
        unknown = [r for r in relations if r not in benchmark.relations]
        if unknown:
            raise RelbenchError(f"--relations: unknown relation {unknown[0]!r} in {benchmark.label}; expected some of {', '.join(benchmark.relations)}")
        cases = [case for case in cases if case.relation in relations]
    if limit is not None:
        if limit < 1:
            raise RelbenchError(f"--limit: expected a positive number of cases, got {limit}")
        cases = cases[:limit]
    if not cases:
        raise RelbenchError(f"{benchmark.label}: no case left to evaluate")
    return cases


def _metric_model(context: RunContext, name: str) -> dict[str, Any] | None:
    from relbench.metrics import METRICS

    from relbench.profiles import default_precision

    meta = METRICS.entry(name).meta
    key = meta.get("model")
    model = context.model(key).describe() if key else None
    precision = default_precision(context)
    if model is not None and meta.get("precision") and precision != "float32":
        # Another precision moves the numbers: a resume with another one is refused like another
        # model. float32, the default, is left out, so runs made before this key resume as they were.
        model = {**model, "dtype": precision}
    return model


class SubjectInputs:
    """Loads each subject's reference images once per run."""

    def __init__(self, benchmark: Benchmark, data_root: Path):
        self.benchmark = benchmark
        self.data_root = data_root
        self._images: dict[str, tuple[tuple["Image.Image", ...], tuple["Image.Image", ...]]] = {}

    def images(self, sid: str) -> tuple[tuple["Image.Image", ...], tuple["Image.Image", ...]]:
        if sid not in self._images:
            subject = self.benchmark.subjects[sid]
            spec_dir = self.benchmark.spec_dir
            self._images[sid] = (
                tuple(load_image(ref, self.data_root, spec_dir) for ref in subject.images),
                tuple(load_image(ref, self.data_root, spec_dir).convert("L") for ref in subject.masks),
            )
        return self._images[sid]

    def request(self, case: Case, seed: int, width: int, height: int) -> "GenerationRequest":
        from relbench.method import GenerationRequest, SubjectInput

        subjects: list[SubjectInput] = []
        for sid, box in zip(case.subjects, case.boxes):
            images, masks = self.images(sid)
            subjects.append(SubjectInput(sid, self.benchmark.subjects[sid].class_noun, images, box, masks))
        relation = self.benchmark.relations[case.relation]
        return GenerationRequest(case.id, case.prompt, relation.phrase, tuple(subjects), seed, width, height, relation.id)

    def scoring_sample(self, case: Case, image: "Image.Image") -> "ScoringSample":
        from relbench.metrics.base import ScoringSample

        relation = self.benchmark.relations[case.relation]
        return ScoringSample(
            case_id=case.id, image=image, prompt=case.prompt, relation_phrase=relation.phrase,
            subject_ids=case.subjects, subject_nouns=tuple(self.benchmark.subjects[s].class_noun for s in case.subjects),
            references=tuple(self.images(s)[0] for s in case.subjects),
            relation_id=relation.id, relation_kind=relation.kind.value, boxes=case.boxes,
            subject_categories=tuple(self.benchmark.subjects[s].category for s in case.subjects),
            benchmark=self.benchmark, data_root=self.data_root,
        )


class Scorer:
    """The run's scoring: its cases' samples scored by the run's metrics (``relbench.scoring.Scorer``,
    the one owner of building metrics and of a row's results, shared with ``relbench.score``), and
    the scoring of rows that lack some of them."""

    def __init__(self, context: RunContext, metric_names: list[str], benchmark: Benchmark, data_root: Path, progress: bool):
        from relbench.scoring import Scorer as MetricScorer

        self.context = context
        self.metric_names = metric_names
        self.benchmark = benchmark
        self.inputs = SubjectInputs(benchmark, data_root)
        self.progress = progress
        self.scoring = MetricScorer.from_context(context, metric_names)

    def score(self, cases: Sequence[Case], images: Sequence["Image.Image"], only: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per image, ``{metric: {value, details, settings, higher_is_better}}``."""
        samples = [self.inputs.scoring_sample(case, image) for case, image in zip(cases, images)]
        return self.scoring.score_samples(samples, only)

    def score_missing(self, writer: RunWriter, case_ids: set[str], shard: "Shard | None" = None,
                      retry: set[RowKey] | None = None) -> tuple[int, list[Row]]:
        """Score every row of the chosen cases that lacks a requested metric, or whose result of it
        failed for a reason that may pass (``RETRY_KEY``) when the row is in ``retry`` (None: every
        row); rows are replaced. Returns the number scored and the rows left unscored because
        their image is missing or cannot be decoded (the caller makes them again or says so)."""
        from tqdm import tqdm

        from relbench.metrics.base import RETRY_KEY

        def needs(row: Row, name: str) -> bool:
            result = row.metrics.get(name)
            if result is None:
                return True
            details = result.get("details")
            return (retry is None or row.key in retry) and isinstance(details, dict) and bool(details.get(RETRY_KEY))

        todo = [row for row in writer.iter_rows()
                if row.case_id in case_ids and any(needs(row, m) for m in self.metric_names)]
        todo = shard.take(todo) if shard is not None else todo
        if not todo or not self.metric_names:
            return 0, []
        unreadable: list[Row] = []
        bar = tqdm(total=len(todo), desc="score", unit="img", disable=not self.progress, dynamic_ncols=True)
        try:
            for start in range(0, len(todo), SCORE_BATCH):
                batch, images = [], []
                for row in todo[start : start + SCORE_BATCH]:
                    image = read_stored_image(writer.store.root / row.image)
                    if image is None:
                        unreadable.append(row)
                    else:
                        batch.append(row)
                        images.append(image)
                missing = sorted({m for row in batch for m in self.metric_names if needs(row, m)})
                scores = self.score([self.benchmark.case(row.case_id) for row in batch], images, only=missing) if batch else []
                for row, new in zip(batch, scores):
                    writer.replace(dataclasses.replace(row, metrics={**row.metrics, **{k: v for k, v in new.items() if needs(row, k)}}))
                bar.update(len(todo[start : start + SCORE_BATCH]))
        finally:
            bar.close()
        return len(todo) - len(unreadable), unreadable


def read_stored_image(path: Path, size: tuple[int, int] | None = None) -> "Image.Image | None":
    """A run's stored image decoded as RGB, or None when it is missing, truncated, corrupt, not an
    image (or not ``size``): the caller makes it again."""
    from relbench.data_root import open_image

    try:
        image = open_image(path)
    except RelbenchError:
        return None
    if size is not None and image.size != size:
        return None
    return image.convert("RGB")


# Images scored per metric call when scoring stored images.
SCORE_BATCH = 16


def _generate(method: "Method", method_plan: MethodPlan, items: list[tuple[Case, int]], plan: EvaluationPlan,
              scorer: Scorer, writer: RunWriter, summary: EvaluateSummary) -> None:
    """Generate, save, score (``--stage all``) and store one row per (case, seed) of ``items``.

    Images are written by a background thread (``ImageSaver``) while the next batch is generated;
    a batch's rows are appended, in order, once its images are written."""
    from tqdm import tqdm

    benchmark, width, height = plan.benchmark, plan.width, plan.height
    method_settings = method.settings()
    bar = tqdm(total=len(items), desc=f"{method.name}", unit="img", disable=not plan.progress, dynamic_ncols=True)
    waiting: deque[tuple[list["Future[None]"], list[Row]]] = deque()  # batches whose rows wait for their images
    all_requests = [scorer.inputs.request(case, seed, width, height) for case, seed in items]
    # Train first, then sample (methods that train per subject set on first need), in the batches
    # the method prefers (e.g. a subject set's cases together).
    method.train_ahead(all_requests)
    order = method.batch_order(all_requests)
    if sorted(order) != list(range(len(items))):
        raise RelbenchError(f"method {method.name!r}: batch_order returned {len(order)} indices, not an order of the {len(items)} requests")
    items, all_requests = [items[i] for i in order], [all_requests[i] for i in order]
    try:
        with ImageSaver() as saver:
            for start in range(0, len(items), method.batch_size):
                batch = items[start : start + method.batch_size]
                requests = all_requests[start : start + method.batch_size]
                paths = [writer.image_path(method.name, case.id, seed) for case, seed in batch]
                # Images a killed run saved before its row are reused, not generated again; a missing
                # or unreadable one is generated (its stale row, if any, is replaced below).
                images: list[Any] = [read_stored_image(path, (width, height)) if image_looks_whole(path) else None for path in paths]
                summary.reused_images += sum(image is not None for image in images)
                todo = [i for i, image in enumerate(images) if image is None]
                seconds_per_image = None
                saves: list["Future[None]"] = []
                if todo:
                    began = time.perf_counter()
                    generated = method.generate([requests[i] for i in todo])
                    seconds_per_image = (time.perf_counter() - began) / len(todo)
                    if len(generated) != len(todo):
                        raise RelbenchError(f"method {method.name!r} returned {len(generated)} images for {len(todo)} requests")
                    for i, image in zip(todo, generated):
                        if image.size != (width, height):
                            raise RelbenchError(f"method {method.name!r} returned a {image.size[0]}x{image.size[1]} image, expected {width}x{height}")
                        images[i] = image.convert("RGB")
                        saves.append(saver.submit(images[i], paths[i]))
                    summary.generated += len(todo)
                scores = scorer.score([case for case, _ in batch], images) if plan.stage == "all" else [{} for _ in batch]
                rows = []
                for j, (case, seed) in enumerate(batch):
                    relation = benchmark.relations[case.relation]
                    rows.append(Row(
                        method=method.name, settings_hash=method_plan.settings_hash,
                        benchmark=benchmark.name, benchmark_version=benchmark.version, profile=method.context.profile,
                        case_id=case.id, relation=relation.id, relation_kind=relation.kind.value,
                        subjects=tuple(case.subjects), subject_categories=tuple(benchmark.subjects[s].category for s in case.subjects),
                        prompt=case.prompt, seed=seed, width=width, height=height,
                        image=writer.store.image_relpath(method.name, case.id, seed),
                        generation_seconds=seconds_per_image if j in todo else None,
                        metrics=scores[j], method_settings=method_settings,
                    ))
                waiting.append((saves, rows))
                _store_written(writer, waiting, wait=False)
                bar.update(len(batch))
            _store_written(writer, waiting, wait=True)
    except KeyboardInterrupt:
        # Ctrl-C: the saver has written the images queued; the rows of the batches already
        # generated and scored are kept (a second Ctrl-C leaves the images for the resume to reuse).
        _store_written(writer, waiting, wait=True)
        raise
    finally:
        bar.close()


def _store_written(writer: RunWriter, waiting: "deque[tuple[list[Future[None]], list[Row]]]", wait: bool) -> None:
    """Append the rows of the waiting batches whose images are written, oldest first (``wait``:
    all of them); a failed image write is raised here (one line: the image and the disk's error)."""
    while waiting and (wait or all(save.done() for save in waiting[0][0])):
        saves, rows = waiting.popleft()
        for save in saves:
            save.result()
        for row in rows:
            writer.replace(row)  # an item is pending when it has no row or its row's image was unreadable


def _record_metric_settings(store: RunStore, writer: RunWriter, metric_names: list[str]) -> None:
    """Copy each metric's resolved settings, direction and range into run.json for reports."""
    from relbench.metrics import METRICS
    from relbench.provenance import now
    from relbench.runstore import atomic_write_json

    run = store.read_run() or {}
    resolved: dict[str, Any] = {}
    for row in writer.iter_rows():
        for name, value in row.metrics.items():
            resolved.setdefault(name, value.get("settings"))
    for name, entry_info in run.get("metrics", {}).items():
        if name not in METRICS:
            continue
        entry = METRICS.entry(name)
        entry_info.update({
            "higher_is_better": entry.meta.get("higher_is_better"),
            "range": list(entry.meta.get("range", ())),
            "summary": entry.summary,
            "settings": resolved.get(name, entry_info.get("settings")),
        })
    run["updated"] = now()
    with output_errors(store.run_json):
        atomic_write_json(store.run_json, run)
