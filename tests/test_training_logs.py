"""Training you can watch: loss terms every --log-every steps in metrics.jsonl and TensorBoard,
once per step across a resume; every default shown by --help."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer

from relbench.errors import RelbenchError
from relbench.methods.dreamrelation import train
from relbench.training import METRICS_LOG, MetricsLog, check_report_to


def tiny_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return ["--profile", "tiny", "--device", "cpu", "--data-root", str(data_root), "--relation", "shake",
            "--output", str(output), "--gradient-accumulation-steps", "1", "--quiet", "--log-every", "1", *extra]


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / METRICS_LOG).read_text().splitlines()]


def tensorboard_scalars(output: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in (output / "logs").iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["dreamrelation-shake"]
    events = EventAccumulator(str(runs[0]))
    events.Reload()  # purges the events a resumed run hid (purge_step)
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_a_tiny_training_logs_every_step_to_metrics_jsonl_and_tensorboard_once_across_a_resume(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "dreamrelation"
    whole = tmp_path / "whole"
    train.main(tiny_args(data, whole, "--max-train-steps", "4", "--checkpointing-steps", "2", "--report-to", "tensorboard"))
    logged = read_log(whole)
    assert [line["step"] for line in logged] == [1, 2, 3, 4]
    assert {"loss", "diffusion", "kml", "attn"} <= set(logged[0])
    assert list((whole / "logs" / "dreamrelation-shake").glob("events.out.tfevents.*"))
    assert [step for step, _ in tensorboard_scalars(whole, "loss")] == [1, 2, 3, 4]
    assert [value for _, value in tensorboard_scalars(whole, "loss")] == pytest.approx([line["loss"] for line in logged], rel=1e-6)

    # Killed after step 3 with its last checkpoint at step 2: the resumed run logs step 3 again.
    split = tmp_path / "split"
    train.main(tiny_args(data, split, "--max-train-steps", "3", "--checkpointing-steps", "2", "--report-to", "tensorboard"))
    shutil.rmtree(split / "checkpoint-3")  # the last step's checkpoint, not written before the kill
    with open(split / METRICS_LOG, "a") as handle:
        handle.write('{"step": 4, "loss": 0.')  # a line the kill cut short
    train.main(tiny_args(data, split, "--max-train-steps", "4", "--checkpointing-steps", "2", "--report-to", "tensorboard",
                         "--resume-from-checkpoint", "latest"))
    resumed = read_log(split)
    assert [line["step"] for line in resumed] == [1, 2, 3, 4]
    for a, b in zip(logged, resumed):
        assert b == pytest.approx(a, abs=1e-6)  # the same values an uninterrupted run logged
    assert [step for step, _ in tensorboard_scalars(split, "loss")] == [1, 2, 3, 4]


def test_log_every_and_report_to_none_write_metrics_jsonl_only(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train.main(tiny_args(shared_data / "dreamrelation", out, "--max-train-steps", "5", "--checkpointing-steps", "100",
                         "--log-every", "2", "--report-to", "none"))
    assert [line["step"] for line in read_log(out)] == [2, 4, 5]  # every 2 steps, and the last
    assert not (out / "logs").exists()


def test_metrics_log_keeps_the_steps_up_to_the_resumed_one(tmp_path: Path) -> None:
    path = tmp_path / METRICS_LOG
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\nnot json\n{"step": 3, "loss": 0.25}\n')
    log = MetricsLog(path, first_step=2)
    log.append(3, {"loss": 0.125})
    log.close()
    assert read_log(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.125}]
    MetricsLog(path, first_step=0).close()  # a fresh start into the same folder
    assert path.read_text() == ""


def test_report_to_a_tracker_that_is_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RelbenchError, match=r"--report-to wandb: wandb is not installed; pip install 'relbench\[wandb\]'"):
        check_report_to("wandb")
    check_report_to("none")


def test_train_help_shows_every_default_and_the_profile_default_is_evaluates() -> None:
    import cli

    help_text = " ".join(train.build_parser().format_help().split())  # unwrapped
    text = help_text[help_text.index("options:"):]  # past the usage lines
    for option, default in (("--rank RANK", "4"), ("--learning-rate LR", "0.0001"), ("--max-train-steps N", "500"),
                            ("--train-batch-size N", "1"), ("--seed SEED", "0"), ("--kml-weight KML_WEIGHT", "0.1"),
                            ("--profile {tiny,full}", "tiny"), ("--lora-alpha LORA_ALPHA", "4.0")):
        start = text.index(option)
        assert f"(default: {default})" in text[start:text.index(" --", start + len(option))], option
    assert "(default: None)" not in text
    command = typer.main.get_command(cli.app)
    evaluate_profile = next(p for p in command.commands["evaluate"].params if p.name == "profile")
    assert train.build_parser().get_default("profile") == evaluate_profile.default
