"""What every training entry shares: checkpoint folders, resuming, the ``python -m`` entry.

Checkpoints are ``<output>/checkpoint-<step>/`` written by ``accelerator.save_state`` (each trainer
registers hooks that save only its trained weights) followed by ``trainer_state.json``; that file is
written last, so a checkpoint cut short while saving is never resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relbench.errors import RelbenchError

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"


def check_output_and_resume(output: Path, resume_from: str | None) -> None:
    """Argument checks every trainer makes before any work."""
    if resume_from and resume_from != "latest" and not Path(resume_from).is_dir():
        raise RelbenchError(f"--resume-from-checkpoint: {resume_from}: no such checkpoint folder")
    if output.exists() and not output.is_dir():
        raise RelbenchError(f"--output: {output} exists and is not a directory")


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
        (folder / TRAINER_STATE).write_text(json.dumps({"global_step": global_step}))  # last: marks it complete
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


def run_cli(main: Callable[[list[str] | None], Path], label: str, argv: list[str] | None = None) -> int:
    """Entry for ``python -m`` / ``accelerate launch -m``: user mistakes -> one line, exit 2."""
    try:
        path = main(argv)
    except RelbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{label}: {path}")
    return 0
