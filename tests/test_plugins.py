"""A method and a metric from outside the repository, named in $RELBENCH_METHODS / $RELBENCH_METRICS,
run through the command line like the built-in ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from relbench.methods import METHODS
from relbench.metrics import METRICS
from relbench.plugins import add_option_settings
from relbench.runstore import read_rows

# One module: the toy's infos and classes together (it imports no torch, so listing stays light).
TOY_PLUGIN = '''
from dataclasses import dataclass

import numpy as np
from PIL import Image

from relbench.method import Method
from relbench.metrics.base import Metric, MetricResult
from relbench.plugins import MethodInfo, MetricInfo

FLAT = MethodInfo(
    name="toy-flat", target="toy_plugin:FlatColour", summary="Toy: one flat colour per image",
    options={"--lora": "red"},  # a shortcut option, to check that --lora follows the metadata
)
REDNESS = MetricInfo(
    name="toy_red", target="toy_plugin:Redness", summary="Toy: mean red channel / 255",
    higher_is_better=True, range=(0.0, 1.0),
)


@dataclass(frozen=True)
class FlatSettings:
    red: int = 255  # the red channel of every pixel


class FlatColour(Method):
    info = FLAT
    settings_cls = FlatSettings

    def generate(self, requests):
        return [Image.new("RGB", (r.width, r.height), (self.config.red, 0, 0)) for r in requests]


class Redness(Metric):
    info = REDNESS

    def settings(self):
        return {"metric": self.name, "scale": 255}

    def score(self, samples):
        return [MetricResult(float(np.asarray(s.image.convert("RGB"))[..., 0].mean()) / 255, {"pixels": s.image.width * s.image.height})
                for s in samples]
'''

TOY_ENV = {"RELBENCH_METHODS": "toy_plugin:FLAT", "RELBENCH_METRICS": "toy_plugin:REDNESS"}


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_plugin.py").write_text(TOY_PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args), env=TOY_ENV)
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    return result.output


def test_a_toy_method_and_metric_from_a_folder_run_through_relbench_evaluate(toy_plugin: Path, tmp_path: Path) -> None:
    assert "toy-flat" in invoke("methods", "list") and "toy_red" in invoke("metrics", "list")
    out = tmp_path / "run"
    summary = invoke("evaluate", "-m", "toy-flat", "--metrics", "toy_red", "-b", "demo", "-p", "tiny", "--limit", "1",
                     "--set", "toy-flat.red=51", "-o", str(out), "-q")
    assert "1 rows (1 images generated" in summary and "methods: toy-flat; metrics: toy_red" in summary
    rows = read_rows(out / "samples.jsonl")  # settings resolved from run.json
    assert len(rows) == 1
    row = rows[0]
    assert row["method"] == "toy-flat" and row["case_id"] == "astronaut-hug-cat" and row["width"] == 64
    assert row["method_settings"]["red"] == 51
    # 51 / 255 exactly: the stored PNG is lossless and every pixel is (51, 0, 0).
    assert row["metrics"]["toy_red"]["value"] == 0.2
    assert row["metrics"]["toy_red"]["details"] == {"pixels": 64 * 64}
    assert row["metrics"]["toy_red"]["higher_is_better"] is True
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"]["toy_red"]["range"] == [0.0, 1.0] and run["metrics"]["toy_red"]["summary"] == "Toy: mean red channel / 255"
    # The variables were set for the command only: afterwards the registries hold the built-ins alone.
    assert "toy-flat" not in METHODS and "toy_red" not in METRICS


def test_shortcut_options_fill_the_setting_of_every_method_declaring_them(toy_plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides: dict[str, dict[str, str]] = {"dreamrelation": {"loras": "old", "lora_scale": "0.5"}}
    add_option_settings(overrides, "--lora", ["hug=a", "carry=b"])
    assert overrides == {"dreamrelation": {"loras": "hug=a,carry=b", "lora_scale": "0.5"}}  # --lora wins over --set
    monkeypatch.setenv("RELBENCH_METHODS", TOY_ENV["RELBENCH_METHODS"])
    overrides = {}
    add_option_settings(overrides, "--lora", ["7"])
    assert overrides == {"dreamrelation": {"loras": "7"}, "toy-flat": {"red": "7"}}
    add_option_settings(overrides, "--lora", None)
    assert overrides == {"dreamrelation": {"loras": "7"}, "toy-flat": {"red": "7"}}
