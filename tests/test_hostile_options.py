"""Hostile command-line options: each mistake ends with one `error:` line and exit code 2, before any
model loads (README: "User mistakes ... end with one `error: ...` line and exit code 2")."""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import yaml

import cli
from relbench.errors import RelbenchError
from relbench.method import RANGE
from relbench.options import MAX_RESOLUTION, MAX_SEED, check_resolution, check_seeds

FAST = ["--metrics", "none", "--limit", "1", "--quiet"]  # every error below comes before any work


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``relbench ARGS`` in this process (through cli.main, the console script): exit code, stderr."""
    monkeypatch.setattr(sys, "argv", ["relbench", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


def assert_one_error_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    code, err = run_cli(monkeypatch, capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == [f"error: {expected}"], (code, err)


def test_resolution_is_bounded_and_zero_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    for value in ("0", "100000", "-8", "12", str(MAX_RESOLUTION + 8)):  # 0 first: it was read as the default
        assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--resolution", value, *FAST],
                              f"--resolution: expected a multiple of 8 from 8 to 4096, got {value}")
    # OmniGen's pipeline needs a multiple of 16 (it declares resolution_multiple = 16).
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "omnigen", "-o", out, "--resolution", "24", *FAST],
                          "--resolution: expected a multiple of 16 from 16 to 4096, got 24")
    assert_one_error_line(monkeypatch, capsys, ["generate", "-m", "sdxl", "--case", "cat-next-to-rocket", "-o", str(tmp_path / "a.png"),
                                                "--resolution", "100000"], "--resolution: expected a multiple of 8 from 8 to 4096, got 100000")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"output": "out", "benchmarks": ["demo"], "resolution": 100000, "methods": [{"method": "sdxl"}]}))
    assert_one_error_line(monkeypatch, capsys, ["sweep", str(sweep), "--dry-run"],
                          f"{sweep}: resolution: expected a multiple of 8 from 8 to 4096, got 100000")
    assert not (tmp_path / "run").exists()
    # The bounds themselves are accepted.
    assert (check_resolution(8), check_resolution(MAX_RESOLUTION), check_resolution(16, 16)) == (8, 4096, 16)


@pytest.mark.parametrize(
    ("method", "setting", "expected"),
    [
        ("sdxl", "num_inference_steps=0", "--set sdxl.num_inference_steps=0: must be >= 1"),  # was a ZeroDivisionError
        ("sdxl", "num_inference_steps=-3", "--set sdxl.num_inference_steps=-3: must be >= 1"),
        ("sdxl", "num_inference_steps=1001", "--set sdxl.num_inference_steps=1001: must be <= 1000"),
        ("sdxl", "guidance_scale=nan", "--set sdxl.guidance_scale=nan: must be a finite number"),
        ("sdxl", "guidance_scale=-inf", "--set sdxl.guidance_scale=-inf: must be a finite number"),
        ("ms-diffusion", "scale=-0.5", "--set ms-diffusion.scale=-0.5: must be >= 0"),
        ("omnigen", "max_input_image_size=100000", "--set omnigen.max_input_image_size=100000: must be <= 4096"),
        ("reference-collage", "background=[0,0,256]", "--set reference-collage.background=[0, 0, 256]: must be <= 255"),
        ("reference-collage", "background=5", "--set reference-collage.background: cannot read '5' as tuple"),
        ("reference-collage", "background=[0,0]", "--set reference-collage.background: cannot read '[0,0]' as tuple"),
    ],
)
def test_method_settings_out_of_range_are_refused_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], method: str, setting: str, expected: str
) -> None:
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", method, "-o", str(tmp_path / "run"), "--set", f"{method}.{setting}", *FAST], expected)
    assert not (tmp_path / "run").exists()


def test_every_numeric_setting_declares_its_range_and_defaults_lie_in_it() -> None:
    from relbench.methods import METHODS
    from relbench.profiles import RunContext

    for name in METHODS.names():
        cls = METHODS.get(name)
        for field in dataclasses.fields(cls.settings_cls):
            if any(kind in str(field.type) for kind in ("int", "float")):  # numbers, and tuples of them
                assert RANGE in field.metadata, f"{name}.{field.name} declares no range"
        for profile in cls.profiles:
            cls.settings_from_overrides(RunContext(profile=profile, device="cpu"), {})  # defaults pass their own ranges


def test_settings_built_in_python_are_checked_and_sweeps_check_theirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from relbench.methods.sdxl.method import SDXL, SDXLSettings
    from relbench.profiles import RunContext

    with pytest.raises(RelbenchError, match=r"^--set sdxl.num_inference_steps=0: must be >= 1$"):
        SDXL(RunContext(device="cpu"), SDXLSettings(num_inference_steps=0))  # refused before the pipeline loads
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"output": "out", "benchmarks": ["demo"], "methods": [{"method": "sdxl", "grid": {"guidance_scale": [5.0, float("nan")]}}]}))
    assert_one_error_line(monkeypatch, capsys, ["sweep", str(sweep), "--dry-run"], "--set sdxl.guidance_scale=nan: must be a finite number")


def test_seeds_are_in_range_and_given_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    huge = "99999999999999999999"  # was an OverflowError inside torch
    for seeds, expected in [
        (huge, f"--seeds: expected an integer from 0 to 4294967295 (2**32 - 1), got {huge}"),
        ("-1", "--seeds: expected an integer from 0 to 4294967295 (2**32 - 1), got -1"),
        ("0,0", "--seeds: seed 0 given more than once; give each seed once"),  # ran the image twice, stored it once
        ("3,1,3", "--seeds: seed 3 given more than once; give each seed once"),
    ]:
        assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--seeds", seeds, *FAST], expected)
    assert_one_error_line(monkeypatch, capsys, ["generate", "-m", "reference-collage", "--case", "cat-next-to-rocket", "-o", str(tmp_path / "a.png"),
                                                "--seed", str(MAX_SEED + 1)], "--seed: expected an integer from 0 to 4294967295 (2**32 - 1), got 4294967296")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"output": "out", "benchmarks": ["demo"], "seeds": [0, 1, 0], "methods": [{"method": "sdxl"}]}))
    assert_one_error_line(monkeypatch, capsys, ["sweep", str(sweep), "--dry-run"], f"{sweep}: seeds: seed 0 given more than once; give each seed once")
    assert check_seeds([0, MAX_SEED]) == (0, 4294967295)


def test_device_strings_and_missing_gpus_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    for device in ("foo", "cuda:x", "gpu", ""):
        assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--device", device, *FAST],
                              f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU, wherever the test runs
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--device", "cuda", *FAST],
                          "--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    assert_one_error_line(monkeypatch, capsys, ["generate", "-m", "sdxl", "--case", "cat-next-to-rocket", "-o", str(tmp_path / "a.png"), "--device", "cuda:0"],
                          "--device cuda:0: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--device", "cuda:2", *FAST],
                          "--device cuda:2: 2 CUDA GPUs visible (cuda:0 to cuda:1)")
    assert not (tmp_path / "run").exists()


def test_unknown_model_keys_are_refused_with_suggestions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from relbench.profiles import MODEL_KEYS

    available = ", ".join(MODEL_KEYS)
    out = str(tmp_path / "run")
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--model", "sdxxl=org/repo", *FAST],
                          f"--model sdxxl=...: unknown model key 'sdxxl'. Did you mean 'sdxl'? Available: {available}")
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "reference-collage", "-o", out, "--model", "foo=bar", *FAST],
                          f"--model foo=...: unknown model key 'foo'. Available: {available}")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"output": "out", "benchmarks": ["demo"], "models": {"dinno": "/m"}, "methods": [{"method": "sdxl"}]}))
    assert_one_error_line(monkeypatch, capsys, ["sweep", str(sweep), "--dry-run"],
                          f"{sweep}: models: dinno=...: unknown model key 'dinno'. Did you mean 'dino'? Available: {available}")
    assert "dense_encoder" in MODEL_KEYS  # a key without a pretrained default is still a key


def test_empty_name_lists_are_an_error_not_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    for option in ("--relations", "--metrics", "--method"):
        assert_one_error_line(monkeypatch, capsys, ["evaluate", "-o", out, option, " , ", "--limit", "1", "--quiet"],
                              f"{option}: empty; give names, comma-separated, or leave the option out")
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-o", out, "-m", "", "--limit", "1", "--quiet"],
                          "--method: empty; give names, comma-separated, or leave the option out")
    assert not (tmp_path / "run").exists()


def test_a_lora_of_the_wrong_shape_is_named_with_its_key_and_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    from relbench.methods.dreamrelation.lora import add_relation_lora, save_relation_lora
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    add_relation_lora(unet, seed=0)
    state = load_file(str(save_relation_lora(unet, tmp_path / "good")))
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight"
    assert tuple(state[key].shape) == (4, 64)  # rank 4 x the tiny UNet's cross-attention width
    for name, tensor, expected in [
        ("wide", torch.zeros(4, 72), "expected shape (4, 64), found (4, 72)"),  # a LoRA of another base model
        ("flat", torch.zeros(4), "expected shape (rank, 64), found (4,)"),
    ]:
        path = tmp_path / f"{name}.safetensors"
        save_file({**state, key: tensor}, str(path))
        assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "dreamrelation", "--lora", str(path), "-o", str(tmp_path / name), *FAST],
                              f"{path}: {key}: {expected} (a LoRA of another base model?)")
    up = key.replace("lora.down", "lora.up").replace("to_k", "to_out.0")
    save_file({**state, up: torch.zeros(64, 8)}, str(tmp_path / "rank.safetensors"))
    assert_one_error_line(monkeypatch, capsys, ["evaluate", "-m", "dreamrelation", "--lora", str(tmp_path / "rank.safetensors"), "-o", str(tmp_path / "r"), *FAST],
                          f"{tmp_path / 'rank.safetensors'}: {up}: expected shape (64, 4), found (64, 8) (a LoRA of another base model?)")


def test_csv_text_cells_cannot_run_as_spreadsheet_formulas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from relbench.reports.leaderboard import save_csv, spreadsheet_safe

    table = pd.DataFrame({
        "name": ["=1+1", "+1", "-x", "@SUM(A1)", "\tx", "plain", "a=b"],
        "value": [-0.5, 1.0, -2.0, 3.0, 4.0, 6.0, 7.0],  # numbers stay numbers, the minus sign included
        "=header": [1, 2, 3, 4, 5, 6, -8],
    })
    with (save_csv(table, tmp_path / "t.csv")).open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "value", "'=header"]
    assert [row[0] for row in rows[1:]] == ["'=1+1", "'+1", "'-x", "'@SUM(A1)", "'\tx", "plain", "a=b"]
    assert [row[1] for row in rows[1:]][:3] == ["-0.5", "1", "-2"] and rows[-1][2] == "-8"
    assert (spreadsheet_safe("\rx"), spreadsheet_safe(-0.5), spreadsheet_safe(None)) == ("'\rx", -0.5, None)
    # A carriage return inside a cell stays inside it (quoted; records end in CRLF).
    save_csv(pd.DataFrame({"name": ["a\rb", "c\nd", "e"], "value": [1.0, 2.0, 3.0]}), tmp_path / "cr.csv")
    with (tmp_path / "cr.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [["name", "value"], ["a\rb", "1"], ["c\nd", "2"], ["e", "3"]]
    assert pd.read_csv(tmp_path / "cr.csv")["name"].tolist() == ["a\rb", "c\nd", "e"]
    # Through the CLI: a method name chosen by the user (folder.name) reaches the leaderboard's first column.
    from relbench.benchmarks import load_benchmark
    from PIL import Image

    case = load_benchmark("demo").cases[0]
    (tmp_path / "images" / case.id).mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "images" / case.id / "0.png")
    run = tmp_path / "run"
    code, err = run_cli(monkeypatch, capsys, "evaluate", "-m", "folder", "--set", f"folder.path={tmp_path / 'images'}",
                        "--set", 'folder.name==HYPERLINK("http://x")', "-o", str(run), *FAST)
    assert code == 0, err
    code, err = run_cli(monkeypatch, capsys, "leaderboard", str(run), "-o", str(tmp_path / "board.csv"))
    assert code == 0, err
    with (tmp_path / "board.csv").open(newline="") as f:
        board = list(csv.DictReader(f))
    assert board[0]["method"] == "'=HYPERLINK(\"http://x\")" and board[0]["n_images"] == "1"


def test_the_api_key_is_masked_in_any_letter_case() -> None:
    from fake_openai import FakeOpenAI, Reply
    from PIL import Image

    from relbench.metrics.relation_judge import YesNoQuestion
    from relbench.metrics.relation_judge.api import APIJudge

    key = "sk-Test-Mixed-Case-9aF3"
    echoes = [key.lower(), key.upper(), key.swapcase()]
    with FakeOpenAI(lambda body: Reply(f"cannot tell; keys {' '.join(echoes)}")) as server:
        judge = APIJudge("fake-vlm", base_url=server.url, api_key=key, backoff=0.0, timeout=5.0, concurrency=1, jitter=lambda: 0.0)
        [answer] = judge.yes_no([YesNoQuestion(Image.new("RGB", (8, 8)), "Is there a cat? Answer yes or no.")])
    assert answer.raw_text == "cannot tell; keys *** *** ***"  # was stored with the key three times
    assert answer.failed and answer.error is not None and key.casefold() not in answer.error.casefold()


def test_embedder_dtype_is_recorded_and_fixed_for_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from relbench.runstore import load_rows, run_settings

    monkeypatch.delenv("RELBENCH_EMBEDDER_DTYPE", raising=False)
    run = tmp_path / "run"
    common = ["evaluate", "-m", "reference-collage", "-o", str(run), "--limit", "1", "--quiet", "--device", "cpu"]
    assert_one_error_line(monkeypatch, capsys, [*common, "--embedder-dtype", "fp8", "--metrics", "none"],
                          "--embedder-dtype: unknown precision 'fp8'; expected one of float32, tf32, bfloat16, float16")
    code, err = run_cli(monkeypatch, capsys, *common, "--metrics", "clip_t,pose", "--embedder-dtype", "bfloat16")
    assert code == 0, err
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"]["clip_t"]["model"]["dtype"] == "bfloat16"
    assert "dtype" not in (record["metrics"]["pose"]["model"] or {})  # its numbers do not depend on it
    [row] = load_rows(run / "samples.jsonl", settings=run_settings(run))
    assert row.metrics["clip_t"]["settings"]["dtype"] == "bfloat16"
    # Resuming with another precision would mix them in one leaderboard: refused like another model.
    code, err = run_cli(monkeypatch, capsys, *common, "--metrics", "clip_t,pose")
    assert code == 2 and "metric 'clip_t' was computed here with another model" in err and "bfloat16" in err, err
    code, err = run_cli(monkeypatch, capsys, *common, "--metrics", "clip_t,pose", "--embedder-dtype", "bfloat16")
    assert code == 0, err
    # float32 (the default) adds nothing to the identity: runs made before the option resume as they were.
    default = tmp_path / "default"
    code, err = run_cli(monkeypatch, capsys, "evaluate", "-m", "reference-collage", "-o", str(default), "--limit", "1",
                        "--quiet", "--device", "cpu", "--metrics", "clip_t")
    assert code == 0, err
    assert "dtype" not in json.loads((default / "run.json").read_text())["metrics"]["clip_t"]["model"]
