"""``relbench evaluate``: generate an image per (method, case, seed), score it, store the row.

Flow: load the benchmark and check the files its cases need -> pick methods and metrics for the
profile -> open the run store (lock, refuse mismatched settings, find what is done) -> per method,
load it once and work through the pending items in batches: generate (or reuse an image a killed
run left on disk), score with every metric, append one row per item. Re-running the same command
does only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.benchmark import Benchmark, Case
from relbench.data_root import load_image, resolve_data_root
from relbench.errors import RelbenchError
from relbench.input_files import input_digests
from relbench.profiles import RunContext
from relbench.runstore import RowKey, RunStore, RunWriter, atomic_save_image, row_key, settings_hash

if TYPE_CHECKING:
    from PIL import Image

    from relbench.method import GenerationRequest, Method
    from relbench.metrics.base import Metric, ScoringSample

# Output size per profile when --resolution is not given.
DEFAULT_RESOLUTION = {"tiny": 64, "full": 1024}


@dataclass
class EvaluateOptions:
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


@dataclass
class EvaluateSummary:
    output: Path
    methods: list[str]
    metrics: list[str]
    generated: int = 0
    reused_images: int = 0
    skipped: int = 0  # rows that were already there
    scored: int = 0  # stored rows scored by the scoring pass (new metrics, or --stage generate rows)
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


def evaluate(options: EvaluateOptions) -> EvaluateSummary:
    from relbench.benchmarks import load_benchmark
    from relbench.methods import METHODS
    from relbench.provenance import environment

    if options.stage not in STAGES:
        raise RelbenchError(f"--stage: expected one of {', '.join(STAGES)}, got {options.stage!r}")
    shard = Shard.current()
    device = options.device
    if shard.world > 1 and device == "auto":
        device = str(_partial_state().device)  # each process its own GPU (or the CPU)
    from relbench.metrics.relation_judge.api import parse_transport_options
    from relbench.metrics.relation_judge.metric import check_judge_options

    context = RunContext(profile=options.profile, device=device, model_overrides=dict(options.model_overrides),
                         judge_options=parse_transport_options(options.judge_options))
    check_judge_options(context)  # before any model loads
    benchmark = load_benchmark(options.benchmark)
    cases = select_cases(benchmark, options.relations, options.limit)
    if not options.seeds:
        raise RelbenchError("--seeds: expected at least one seed")
    data_root = resolve_data_root(options.data_root)
    check_case_files(benchmark, cases, data_root)

    method_names = select_methods(options.methods, options.profile, options.method_overrides)
    metric_names = select_metrics(options.metrics, options.profile)
    for name in options.method_overrides:
        if name not in method_names:
            raise RelbenchError(f"--set {name}.*: method {name!r} is not being evaluated (methods: {', '.join(method_names)})")
    size = options.resolution or DEFAULT_RESOLUTION[options.profile]
    if size < 8 or size % 8:
        raise RelbenchError(f"--resolution: expected a multiple of 8 of at least 8, got {size}")
    width = height = size

    method_settings: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name in method_names:
        method_settings[name] = method_config(METHODS.get(name), context, options.method_overrides.get(name, {}), width, height)
        if options.stage != "score":
            METHODS.get(name).check_cases(method_settings[name][0], benchmark, cases, tuple(options.seeds))

    config = {
        "benchmark": {"name": benchmark.name, "version": benchmark.version, "spec_sha256": spec_digest(benchmark)},
        "profile": options.profile,
        "seeds": list(options.seeds),
        "resolution": [width, height],
        "cases": [case.id for case in cases],
        # The sha256 of every file the cases read (relbench.input_files): a resume with a replaced
        # reference image is refused. Only the main process writes run.json, so only it hashes.
        "inputs": input_digests(benchmark, cases, data_root) if shard.rank == 0 else {},
        # Generating computes no metric; a later --stage score adds the ones it computes.
        "metrics": {} if options.stage == "generate" else {name: {"model": _metric_model(context, name)} for name in metric_names},
        # Scoring an existing run touches no method: its methods stay as run.json has them.
        "methods": {} if options.stage == "score" else {
            name: {"settings_hash": settings_hash(requested), "settings": requested}
            for name, (_, requested) in method_settings.items()
        },
    }
    store = RunStore(Path(options.output))
    summary = EvaluateSummary(Path(options.output), method_names if options.stage != "score" else [],
                              metric_names if options.stage != "generate" else [])
    summary.rank, summary.world = shard.rank, shard.world
    scorer = Scorer(context, metric_names, benchmark, data_root, options.progress)
    env = environment(str(context.torch_device()))
    if shard.world == 1:
        with store.open_for_writing(config, env) as writer:
            _work(writer, options, method_names, method_settings, config, cases, benchmark, scorer, width, height, summary, shard)
            writer.compact()
            summary.rows = len(writer.rows)
            _record_metric_settings(store, writer, metric_names)
        return summary
    # Several processes (accelerate launch / torchrun): the main one checks the settings and merges
    # what a killed run left; each process then works on its share of the items and writes its own
    # shard; the main one merges the shards at the end.
    if shard.rank == 0:
        store.open_for_writing(config, env).close()
    shard.barrier()
    with store.open_shard(shard.rank) as writer:
        _work(writer, options, method_names, method_settings, config, cases, benchmark, scorer, width, height, summary, shard)
    shard.barrier()
    if shard.rank == 0:
        with store.open_for_writing(config, env) as writer:  # absorbs the shards
            summary.rows = len(writer.rows)
            _record_metric_settings(store, writer, metric_names)
    shard.barrier()
    return summary


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


def _work(writer: RunWriter, options: EvaluateOptions, method_names: list[str], method_settings: dict[str, Any],
          config: dict[str, Any], cases: list[Case], benchmark: Benchmark, scorer: "Scorer", width: int, height: int,
          summary: EvaluateSummary, shard: Shard) -> None:
    """Generate the missing images (this process's share), then score rows that lack a metric."""
    from relbench.methods import METHODS

    before = set(writer.rows)  # the rows earlier runs left
    if options.stage != "score":
        pending = {
            name: [(case, seed) for case in cases for seed in options.seeds
                   if not writer.has((name, config["methods"][name]["settings_hash"], case.id, seed))]
            for name in method_names
        }
        summary.skipped = sum(len(cases) * len(options.seeds) - len(p) for p in pending.values())
        for name in method_names:
            mine = shard.take(pending[name])
            if mine:
                settings, _ = method_settings[name]
                method = METHODS.get(name)(scorer.context, settings)
                method.use_benchmark(benchmark, scorer.inputs.data_root)
                _generate(method, config["methods"][name]["settings_hash"], mine, benchmark, scorer,
                          writer, width, height, summary, options.progress, score=options.stage == "all")
                del method  # free its models before the next method loads
    if options.stage != "generate":
        # Failed results of rows made before this run are retried; this run's own failures are
        # left for the next run (its judge would only repeat the same failed answers now).
        summary.scored = scorer.score_missing(writer, {case.id for case in cases}, shard, retry=before)


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

    key = METRICS.entry(name).meta.get("model")
    return context.model(key).describe() if key else None


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
    """The run's metrics, built on first use, and the scoring of rows that lack some of them."""

    def __init__(self, context: RunContext, metric_names: list[str], benchmark: Benchmark, data_root: Path, progress: bool):
        self.context = context
        self.metric_names = metric_names
        self.benchmark = benchmark
        self.inputs = SubjectInputs(benchmark, data_root)
        self.progress = progress
        self._metrics: list["Metric"] | None = None

    @property
    def metrics(self) -> list["Metric"]:
        if self._metrics is None:
            from relbench.metrics import METRICS

            self._metrics = [METRICS.get(name)(self.context) for name in self.metric_names]
        return self._metrics

    def score(self, cases: Sequence[Case], images: Sequence["Image.Image"], only: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per image, ``{metric: {value, details, settings, higher_is_better}}``."""
        samples = [self.inputs.scoring_sample(case, image) for case, image in zip(cases, images)]
        out: list[dict[str, Any]] = [{} for _ in samples]
        for metric in self.metrics:
            if only is not None and metric.name not in only:
                continue
            settings = metric.settings()
            for entry, result in zip(out, metric.score(samples)):
                entry[metric.name] = {
                    "value": result.value, "details": result.details, "settings": settings,
                    "higher_is_better": metric.higher_is_better,
                }
        return out

    def score_missing(self, writer: RunWriter, case_ids: set[str], shard: "Shard | None" = None,
                      retry: set[RowKey] | None = None) -> int:
        """Score every row of the chosen cases that lacks a requested metric, or whose result of it
        failed for a reason that may pass (``RETRY_KEY``) when the row is in ``retry`` (None: every
        row); rows are replaced."""
        from PIL import Image
        from tqdm import tqdm

        from relbench.metrics.base import RETRY_KEY

        def needs(row: dict[str, Any], name: str) -> bool:
            result = row.get("metrics", {}).get(name)
            if result is None:
                return True
            details = result.get("details") if isinstance(result, dict) else None
            return (retry is None or row_key(row) in retry) and isinstance(details, dict) and bool(details.get(RETRY_KEY))

        todo = [row for row in writer.iter_rows()
                if row["case_id"] in case_ids and any(needs(row, m) for m in self.metric_names)]
        todo = shard.take(todo) if shard is not None else todo
        if not todo or not self.metric_names:
            return 0
        bar = tqdm(total=len(todo), desc="score", unit="img", disable=not self.progress, dynamic_ncols=True)
        try:
            for start in range(0, len(todo), SCORE_BATCH):
                batch = todo[start : start + SCORE_BATCH]
                images = []
                for row in batch:
                    path = writer.store.root / row["image"]
                    if not path.is_file():
                        raise RelbenchError(f"{path}: image of row ({row['method']}, {row['case_id']}, seed {row['seed']}) is missing; run with --stage generate first")
                    with Image.open(path) as stored:
                        images.append(stored.convert("RGB"))
                missing = sorted({m for row in batch for m in self.metric_names if needs(row, m)})
                scores = self.score([self.benchmark.case(row["case_id"]) for row in batch], images, only=missing)
                for row, new in zip(batch, scores):
                    writer.replace({**row, "metrics": {**row.get("metrics", {}), **{k: v for k, v in new.items() if needs(row, k)}}})
                bar.update(len(batch))
        finally:
            bar.close()
        return len(todo)


# Images scored per metric call when scoring stored images.
SCORE_BATCH = 16


def _generate(
    method: "Method", shash: str, items: list[tuple[Case, int]], benchmark: Benchmark, scorer: Scorer,
    writer: RunWriter, width: int, height: int, summary: EvaluateSummary, progress: bool, score: bool,
) -> None:
    from PIL import Image
    from tqdm import tqdm

    method_settings = method.settings()
    bar = tqdm(total=len(items), desc=f"{method.name}", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(items), method.batch_size):
            batch = items[start : start + method.batch_size]
            requests = [scorer.inputs.request(case, seed, width, height) for case, seed in batch]
            paths = [writer.image_path(method.name, case.id, seed) for case, seed in batch]
            # Images a killed run saved before its row are reused, not generated again.
            todo = [i for i, path in enumerate(paths) if not path.is_file()]
            seconds_per_image = None
            images: list[Any] = [None] * len(batch)
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
                    atomic_save_image(images[i], paths[i])
                summary.generated += len(todo)
            for i, path in enumerate(paths):
                if images[i] is None:
                    with Image.open(path) as stored:
                        images[i] = stored.convert("RGB")
                    summary.reused_images += 1
            scores = scorer.score([case for case, _ in batch], images) if score else [{} for _ in batch]
            for j, (case, seed) in enumerate(batch):
                relation = benchmark.relations[case.relation]
                writer.append({
                    "schema": 1,
                    "method": method.name,
                    "settings_hash": shash,
                    "benchmark": benchmark.name,
                    "benchmark_version": benchmark.version,
                    "profile": method.context.profile,
                    "case_id": case.id,
                    "relation": relation.id,
                    "relation_kind": relation.kind.value,
                    "subjects": list(case.subjects),
                    "subject_categories": [benchmark.subjects[s].category for s in case.subjects],
                    "prompt": case.prompt,
                    "seed": seed,
                    "width": width,
                    "height": height,
                    "image": writer.store.image_relpath(method.name, case.id, seed),
                    "generation_seconds": seconds_per_image if j in todo else None,
                    "metrics": scores[j],
                    "method_settings": method_settings,
                })
            bar.update(len(batch))
    finally:
        bar.close()


def _record_metric_settings(store: RunStore, writer: RunWriter, metric_names: list[str]) -> None:
    """Copy each metric's resolved settings, direction and range into run.json for reports."""
    from relbench.metrics import METRICS
    from relbench.provenance import now
    from relbench.runstore import atomic_write_json

    run = store.read_run() or {}
    resolved: dict[str, Any] = {}
    for row in writer.iter_rows():
        for name, value in row.get("metrics", {}).items():
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
    atomic_write_json(store.run_json, run)
