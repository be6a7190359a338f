"""The training skeleton every trainer shares (``relbench train NAME``, ``accelerate launch -m``).

A trainer (``methods/<name>/train.py``) owns its model, data and loss; this module owns the rest:

* arguments: ``add_training_arguments`` (output and checkpoints, profile and model overrides,
  optimisation, device, logging) with each trainer's defaults (``TrainingDefaults``), and
  ``validate_training_arguments``, which checks them before any model loads;
* ``make_accelerator(args)``: devices, processes, mixed precision, gradient accumulation;
* ``run_training(accelerator, args, job, desc)``: given the trainer's ``TrainingJob`` (its modules,
  trainable parameters, micro-step loss and weight files), the AdamW loop with gradient
  clipping, a progress bar whose loss terms are read back from the device only every
  ``--log-every`` steps, checkpoints every ``--checkpointing-steps`` (at most
  ``--checkpoints-total-limit``), ``--resume-from-checkpoint latest``, and the final weights.
  The same read-back logs the loss terms: to ``<output>/metrics.jsonl`` (always) and to
  Accelerate's trackers (``--report-to tensorboard|wandb|none``; TensorBoard event files under
  ``<output>/logs/``);
  A trainer's ``main`` is ``parse_args``, ``make_accelerator``, its job, ``run_training``;
* randomness: micro-step ``n`` of process ``p`` draws from generators seeded with
  ``step_seed(seed, n, p)`` only, so a resumed run computes exactly what an uninterrupted one does;
* ``write_training_config``: ``training_config.json`` (every argument, the trainer's extras, the
  environment).

Checkpoints are ``<output>/checkpoint-<step>/`` written by ``accelerator.save_state`` (hooks save
only the trainer's weight files, never whole models) followed by ``trainer_state.json``; that file
is written last, so a checkpoint cut short while saving is never resumed from.

``metrics.jsonl`` holds one line per logged step, ``{"step": N, "<term>": mean over the main
process's micro-batches since the last line, ...}``. A resumed run first drops the lines after
its checkpoint's step (they are logged again, with the same values), so the file holds each step
once; TensorBoard hides the events after it likewise (``purge_step``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.atomic import atomic_write_text
from relbench.errors import RelbenchError
from relbench.profiles import DEFAULT_PROFILE, PROFILES

if TYPE_CHECKING:
    import torch

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
TRAINING_CONFIG = "training_config.json"
METRICS_LOG = "metrics.jsonl"
TRACKER_LOGS = "logs"  # <output>/logs/<project>/: TensorBoard event files
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "wandb", "none")


# --------------------------------------------------------------------------------------------
# Arguments


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are RelbenchErrors (one line, exit 2) rather than a usage dump."""

    def error(self, message: str) -> Any:
        raise RelbenchError(f"{self.prog}: {message}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: argparse's own formatter skips options without a
    help text and appends "(default: None)" to a text that already explains its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default == []  # (0 is a default)
        if not action.option_strings or unset or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._get_help_string(action):
            action = copy.copy(action)  # an option without help text still shows its default
            action.help = self._get_help_string(action)
        return super()._format_action(action)


def default_report_to() -> str:
    """``--report-to``'s default: TensorBoard when it is installed, else none (wandb needs an
    account, so it is never the default)."""
    return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"


@dataclass(frozen=True, kw_only=True)
class TrainingDefaults:
    """A trainer's defaults for the shared arguments, and which of the optional ones it has."""

    checkpointing_steps: int
    train_batch_size: int
    gradient_accumulation_steps: int
    max_train_steps: int | None  # None: the trainer derives it after parsing (e.g. per subject)
    learning_rate: float
    adam_weight_decay: float
    seed: int = 0
    full_resolution: int = 1024  # the full profile's default resolution (tiny: 64)
    resolution_multiple: int = 8
    min_resolution: int = 16
    mixed_precision: str | None = None  # None: fp16 on a GPU, "no" on the CPU
    variant: str | None = None
    output_help: str = "weights and checkpoints go here"  # a default output folder, if any, is the trainer's
    model_help: str = "replace a pretrained model"
    tiny_seed: bool = True  # --tiny-seed: the tiny profile's random weights
    clipping: bool = True  # --max-grad-norm
    gradient_checkpointing: bool = True  # --gradient-checkpointing

    @property
    def steps_help(self) -> str:
        return "optimizer steps"


def add_training_arguments(parser: argparse.ArgumentParser, defaults: TrainingDefaults) -> dict[str, Any]:
    """Add the shared arguments; returns their groups (output, models, optimisation, misc) for
    the trainer's own options. Sets the parser's formatter to ``HelpFormatter`` so that every
    trainer's ``--help`` shows every default."""
    parser.formatter_class = HelpFormatter
    out = parser.add_argument_group("output")
    out.add_argument("--output", "--output-dir", dest="output", type=Path, default=None, metavar="DIR", help=defaults.output_help)
    out.add_argument("--checkpointing-steps", type=int, default=defaults.checkpointing_steps, metavar="N", help="save a resumable checkpoint every N optimizer steps")
    out.add_argument("--checkpoints-total-limit", type=int, default=None, metavar="N", help="keep at most this many checkpoints (default: all)")
    out.add_argument("--resume-from-checkpoint", default=None, help="a checkpoint folder, or 'latest' (starts from step 0 when there is none)")
    models = parser.add_argument_group("models")
    models.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                        help="'tiny': random tiny models from configs (CPU, offline); 'full': the pretrained models")
    models.add_argument("--model", action="append", default=[], metavar="KEY=ID_OR_PATH[@REVISION]", help=defaults.model_help)
    models.add_argument("--variant", default=defaults.variant,
                        help="weight files variant of the model folder, e.g. fp16" + ("" if defaults.variant else " (default: the full-precision files)"))
    if defaults.tiny_seed:
        models.add_argument("--tiny-seed", type=int, default=0, help="seed of the tiny profile's random weights (must match the generating run's)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--resolution", type=int, default=None, help=f"training resolution (default: {defaults.full_resolution} full, 64 tiny)")
    opt.add_argument("--train-batch-size", type=int, default=defaults.train_batch_size, metavar="N", help="examples per micro-batch and process")
    opt.add_argument("--gradient-accumulation-steps", type=int, default=defaults.gradient_accumulation_steps, metavar="N",
                     help="micro-batches per optimizer step")
    opt.add_argument("--max-train-steps", type=int, default=defaults.max_train_steps, metavar="N", help=defaults.steps_help)
    opt.add_argument("--learning-rate", type=float, default=defaults.learning_rate, metavar="LR", help="AdamW learning rate (constant)")
    opt.add_argument("--adam-beta1", type=float, default=0.9, metavar="B1", help="AdamW beta1")
    opt.add_argument("--adam-beta2", type=float, default=0.999, metavar="B2", help="AdamW beta2")
    opt.add_argument("--adam-weight-decay", type=float, default=defaults.adam_weight_decay, metavar="W", help="AdamW weight decay")
    opt.add_argument("--adam-epsilon", type=float, default=1e-8, metavar="EPS", help="AdamW epsilon")
    if defaults.clipping:
        opt.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    opt.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=defaults.mixed_precision,
                     help="default: fp16 on a GPU, 'no' on the CPU" if defaults.mixed_precision is None else None)
    if defaults.gradient_checkpointing:
        opt.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass (less memory, slower)")
    opt.add_argument("--seed", type=int, default=defaults.seed, help="seed of every step's batch, noise and timesteps")
    misc = parser.add_argument_group("misc")
    misc.add_argument("--device", default="auto", help="used without accelerate launch: auto, cpu, cuda, cuda:N")
    misc.add_argument("--log-every", type=int, default=10, metavar="N",
                      help=f"every N optimizer steps, log the mean loss terms: progress bar, <output>/{METRICS_LOG}, --report-to")
    misc.add_argument("--report-to", choices=REPORT_TO, default=default_report_to(),
                      help=f"tracker of the logged loss terms besides {METRICS_LOG}: TensorBoard (event files under "
                           f"<output>/{TRACKER_LOGS}/; pip install 'relbench[tensorboard]'), Weights & Biases (pip install "
                           "'relbench[wandb]'), or none (default: tensorboard when it is installed, else none)")
    misc.add_argument("--quiet", action="store_true", help="no progress bar")
    return {"output": out, "models": models, "optimisation": opt, "misc": misc}


def require_positive(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Each named argument (not None) must be an integer >= 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RelbenchError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")


def require_non_negative(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Each named argument must be a finite number >= 0."""
    for name in names:
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise RelbenchError(f"--{name.replace('_', '-')}: expected a finite number >= 0, got {value}")


def validate_training_arguments(args: argparse.Namespace, defaults: TrainingDefaults) -> None:
    """Check the shared arguments before any model loads (``args.output`` set by then); fills in
    ``args.resolution`` and ``args.model_overrides``."""
    from relbench.profiles import check_device, parse_model_overrides
    from relbench.options import MAX_RESOLUTION

    if args.output is None:
        raise RelbenchError("--output: required (the folder the weights and checkpoints go to)")
    if args.resolution is None:
        args.resolution = 64 if args.profile == "tiny" else defaults.full_resolution
    require_positive(args, ("checkpointing_steps", "checkpoints_total_limit", "train_batch_size", "gradient_accumulation_steps",
                            "max_train_steps", "log_every"))
    if (not defaults.min_resolution <= args.resolution <= MAX_RESOLUTION) or args.resolution % defaults.resolution_multiple:
        raise RelbenchError(f"--resolution: expected a multiple of {defaults.resolution_multiple} from {defaults.min_resolution} "
                            f"to {MAX_RESOLUTION}, got {args.resolution}")
    require_non_negative(args, ("learning_rate", "adam_weight_decay", "adam_epsilon", *(("max_grad_norm",) if defaults.clipping else ())))
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise RelbenchError(f"--{name.replace('_', '-')}: expected a number in [0, 1), got {getattr(args, name)}")
    check_device(args.device)
    check_report_to(args.report_to)
    args.model_overrides = parse_model_overrides(args.model)
    check_output_and_resume(args.output, args.resume_from_checkpoint)


def check_report_to(report_to: str) -> None:
    """The tracker ``--report-to`` names must be installed (checked before any model loads)."""
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise RelbenchError(f"--report-to {report_to}: {report_to} is not installed; pip install 'relbench[{report_to}]', "
                            "or --report-to none (the loss terms still go to metrics.jsonl)")


def check_output_and_resume(output: Path, resume_from: str | None) -> None:
    """Argument checks every trainer makes before any work."""
    if resume_from and resume_from != "latest" and not Path(resume_from).is_dir():
        raise RelbenchError(f"--resume-from-checkpoint: {resume_from}: no such checkpoint folder")
    if output.exists() and not output.is_dir():
        raise RelbenchError(f"--output: {output} exists and is not a directory")


# --------------------------------------------------------------------------------------------
# Checkpoints


def find_latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer state was written, which happens last)."""
    found = [(int(m.group(1)), p) for p in output.glob(f"{CHECKPOINT_PREFIX}*")
             if (m := re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", p.name)) and (p / TRAINER_STATE).is_file()]
    return max(found)[1] if found else None


def save_checkpoint(accelerator: Any, output: Path, global_step: int, total_limit: int | None) -> Path:
    """Save the training state at ``global_step``, keeping at most ``total_limit`` checkpoints."""
    folder = output / f"{CHECKPOINT_PREFIX}{global_step}"
    if accelerator.is_main_process and total_limit is not None:
        existing = sorted((int(p.name[len(CHECKPOINT_PREFIX):]), p) for p in output.glob(f"{CHECKPOINT_PREFIX}*")
                          if p.name[len(CHECKPOINT_PREFIX):].isdigit())
        for _, old in existing[: max(0, len(existing) - total_limit + 1)]:
            shutil.rmtree(old)
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        atomic_write_text(folder / TRAINER_STATE, json.dumps({"global_step": global_step}))  # last: marks it complete
    return folder


def resume(accelerator: Any, resume_from: str | None, output: Path, quiet: bool = False) -> int:
    """Load ``--resume-from-checkpoint`` (a folder or ``latest``); returns the step to start at."""
    if not resume_from:
        return 0
    folder = find_latest_checkpoint(output) if resume_from == "latest" else Path(resume_from)
    if folder is None:
        if not quiet:
            accelerator.print(f"no checkpoint in {output}: starting from step 0")
        return 0
    if not (folder / TRAINER_STATE).is_file():
        raise RelbenchError(f"{folder}: not a complete checkpoint (no {TRAINER_STATE}); it was cut short while saving")
    accelerator.load_state(str(folder))
    step = int(json.loads((folder / TRAINER_STATE).read_text())["global_step"])
    if not quiet:
        accelerator.print(f"resumed from {folder} at step {step}")
    return step


# --------------------------------------------------------------------------------------------
# Randomness


def step_seed(seed: int, step: int, process: int) -> int:
    """The seed of micro-step ``step`` of process ``process``: the same whether resumed or not."""
    return (seed * 1_000_003 + step * 9_973 + process) % (2**63)


def step_generator(seed: int, step: int, process: int, device: Any) -> "torch.Generator":
    """A generator on ``device`` seeded with ``step_seed(seed, step, process)``."""
    import torch

    return torch.Generator(device=device).manual_seed(step_seed(seed, step, process))


@dataclass(frozen=True)
class MicroStep:
    """One micro-batch of the loop: its index (optimizer step x accumulation + micro-step), the
    process and the seed of its random stream."""

    index: int
    process: int
    seed: int

    def generator(self, device: Any = "cpu") -> "torch.Generator":
        """A new generator of this micro-step's stream (each call starts it afresh)."""
        import torch

        return torch.Generator(device=device).manual_seed(self.seed)


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainingJob:
    """What a trainer hands the loop: its model, data and loss, and its weight files."""

    modules: list[Any]  # the modules holding trainable parameters (prepared by Accelerate)
    params: list[Any]  # the trainable parameters (float32)
    # (prepared modules, micro-step) -> (loss of one micro-batch, detached terms for the progress bar)
    micro_step: Callable[[list[Any], MicroStep], tuple["torch.Tensor", dict[str, "torch.Tensor"]]]
    save_weights: Callable[[Path], None]  # a checkpoint: the trainer's weight files into a folder
    load_weights: Callable[[Path], None]  # resuming: read them back
    save_final: Callable[[], None]  # the main process, after the last step: final weights and training config
    output: Path  # what the training returns (the weights file or folder)
    learning_rate: float | None = None  # the learning rate used (default: --learning-rate)
    max_grad_norm: float = 0.0  # clip the gradient norm to this (0: no clipping)
    checkpoint_last_step: bool = False  # also checkpoint the last step (resuming a finished run then has nothing to do)


def make_accelerator(args: argparse.Namespace) -> Any:
    """The Accelerator of ``args`` (processes from ``accelerate launch``, else ``--device``)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    mixed = args.mixed_precision or ("fp16" if on_gpu else "no")
    if mixed == "fp16" and not on_gpu:
        raise RelbenchError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU")
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=mixed, cpu=not on_gpu,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(args.output), logging_dir=str(args.output / TRACKER_LOGS),
                                            automatic_checkpoint_naming=False),
    )


# The frozen weights' dtype of each --mixed-precision (trainable ones stay float32).
WEIGHT_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


def weight_dtype_name(accelerator: Any) -> str:
    """Frozen weights in the mixed-precision dtype (trainable ones stay float32)."""
    return WEIGHT_DTYPES[str(accelerator.mixed_precision)]


def run_training(accelerator: Any, args: argparse.Namespace, job: TrainingJob, desc: str) -> Path:
    """AdamW over ``job.params`` for ``args.max_train_steps`` optimizer steps, with checkpoints,
    then the final weights (``job.save_final`` on the main process); returns ``job.output``.

    Each optimizer step accumulates ``args.gradient_accumulation_steps`` micro-steps; micro-step
    ``n`` of process ``p`` draws its samples and noise from ``step_seed(seed, n, p)``.
    """
    import torch
    from tqdm.auto import tqdm

    learning_rate = args.learning_rate if job.learning_rate is None else job.learning_rate
    optimizer = torch.optim.AdamW(job.params, lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    # Prepared modules are wrapped for data parallelism (gradients averaged over processes).
    prepared = accelerator.prepare(*job.modules, optimizer)
    prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
    modules, optimizer = prepared[:-1], prepared[-1]

    # Checkpoints hold the trainer's weight files, the optimizer and the RNG states; never whole models.
    def save_hook(_models: list[Any], weights: list[Any], folder: str) -> None:
        if accelerator.is_main_process:
            job.save_weights(Path(folder))
        weights.clear()

    def load_hook(loaded: list[Any], folder: str) -> None:
        loaded.clear()
        job.load_weights(Path(folder))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    first_step = resume(accelerator, args.resume_from_checkpoint, args.output, args.quiet)

    args.output.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(args.output / METRICS_LOG, first_step) if accelerator.is_main_process else None
    start_trackers(accelerator, args, desc, first_step)
    bar = tqdm(range(first_step, args.max_train_steps), initial=first_step, total=args.max_train_steps, desc=desc,
               disable=args.quiet or not accelerator.is_local_main_process, dynamic_ncols=True)
    sums: dict[str, Any] = {}
    logged = 0
    for module in modules:
        module.train()
    accumulation = args.gradient_accumulation_steps
    for step in range(first_step, args.max_train_steps):
        for micro in range(accumulation):
            index = step * accumulation + micro
            stream = MicroStep(index, accelerator.process_index, step_seed(args.seed, index, accelerator.process_index))
            with accelerator.accumulate(*modules):
                loss, terms = job.micro_step(modules, stream)
                accelerator.backward(loss)
                if accelerator.sync_gradients and job.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(job.params, job.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value
            logged += 1
        global_step = step + 1
        last = global_step == args.max_train_steps
        if global_step % args.log_every == 0 or last:
            # The only device -> host reads of the loop, once per --log-every steps.
            means = {key: float(value) / logged for key, value in sums.items()}
            bar.set_postfix({key: f"{value:.4g}" for key, value in means.items()})
            if log is not None:
                log.append(global_step, means)
            accelerator.log(means, step=global_step)  # the trackers (main process only)
            sums, logged = {}, 0
        bar.update(1)
        if (global_step % args.checkpointing_steps == 0 and not last) or (last and job.checkpoint_last_step):
            save_checkpoint(accelerator, args.output, global_step, args.checkpoints_total_limit)
    bar.close()
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        job.save_final()
    accelerator.end_training()
    return job.output


# --------------------------------------------------------------------------------------------
# Logged loss terms


class MetricsLog:
    """``<output>/metrics.jsonl``: one line per logged step, appended as the run goes.

    Opened at ``first_step`` (0, or the step a resumed run starts from), it first keeps only the
    lines of earlier steps (and drops a line a kill cut short), so a resumed run, which logs the
    following steps again, leaves each step in the file once.
    """

    def __init__(self, path: Path, first_step: int):
        self.path = path
        kept = [line for line in self._lines() if line["step"] <= first_step]
        atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in kept))
        self._handle = open(path, "a", encoding="utf-8")

    def _lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = []
        for text in self.path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue  # the last line of a killed run, cut short
            if isinstance(line, dict) and isinstance(line.get("step"), int):
                lines.append(line)
        return lines

    def append(self, step: int, values: dict[str, float]) -> None:
        self._handle.write(json.dumps({"step": step, **values}) + "\n")
        self._handle.flush()  # readable while the run goes on (tail -f, a notebook)

    def close(self) -> None:
        self._handle.close()


def start_trackers(accelerator: Any, args: argparse.Namespace, project: str, first_step: int) -> None:
    """Start the ``--report-to`` tracker: TensorBoard under ``<output>/logs/<project>/`` (a resumed
    run hides the events its checkpoint's successors logged: they are logged again), wandb with
    its files under ``<output>``."""
    if args.report_to == "none":
        return
    init_kwargs: dict[str, dict[str, Any]] = {"wandb": {"dir": str(args.output)}}
    if first_step > 0:
        init_kwargs["tensorboard"] = {"purge_step": first_step + 1}
    accelerator.init_trackers(project.replace(" ", "-"), init_kwargs=init_kwargs)


# --------------------------------------------------------------------------------------------
# Records and the entry


def write_training_config(args: argparse.Namespace, extra: dict[str, Any], device: str, skip: Sequence[str] = ()) -> Path:
    """``<output>/training_config.json``: every argument (but ``skip``), ``extra`` (the models
    loaded, digests of the weights written, ...) and the environment."""
    from relbench.provenance import environment

    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items() if key not in skip}
    config.update(extra)
    config["environment"] = environment(device)
    path = args.output / TRAINING_CONFIG
    atomic_write_text(path, json.dumps(config, indent=2, default=str) + "\n")
    return path


def run_cli(main: Callable[[list[str] | None], Path], label: str, argv: list[str] | None = None) -> int:
    """Entry for ``python -m`` / ``accelerate launch -m``: user mistakes -> one line, exit 2."""
    try:
        path = main(argv)
    except RelbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{label}: {path}")
    return 0
