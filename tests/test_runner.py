"""The runner's owners: one result row (relbench.rows.Row) written by the runner, keyed by the run
store and read by the reports; one plan (EvaluationPlan); one method lifecycle shared by
``relbench evaluate`` and ``relbench generate`` (build_method: build, use_benchmark, generate)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from relbench.errors import RelbenchError
from relbench.generate import generate_one
from relbench.reports.tables import SAMPLE_COLUMNS, load_run
from relbench.hashing import settings_hash
from relbench.rows import ROW_FIELDS, ROW_SCHEMA_VERSION, Row, SettingsTable
from relbench.runner import EvaluateOptions, evaluate, plan_evaluation
from relbench.runstore import RunStore, load_rows

# The row's JSON fields as README's "Output" section documents them: users' scripts read these.
DOCUMENTED_FIELDS = [
    "schema", "method", "settings_hash", "benchmark", "benchmark_version", "profile", "case_id", "relation",
    "relation_kind", "subjects", "subject_categories", "prompt", "seed", "width", "height", "image",
    "generation_seconds", "metrics", "method_settings_ref",
]
# A metric result as README documents it: the settings by reference to run.json's metric_settings.
DOCUMENTED_RESULT = ["value", "details", "settings_ref", "higher_is_better"]


def test_readme_documents_the_row_fields_in_their_order() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    bullet = readme[readme.index("- `DIR/samples.jsonl`"):]
    bullet = bullet[: bullet.index("The format is")]
    quoted = [" ".join(text.split()) for text in re.findall(r"`([^`]+)`", bullet)]  # lines wrap inside quotes
    assert [name for name in quoted if re.fullmatch(r"[a-z_]+", name)] == DOCUMENTED_FIELDS
    assert "{name: {" + ", ".join(DOCUMENTED_RESULT) + "}}" in quoted
    assert f"The format is `relbench.rows.Row` (schema {ROW_SCHEMA_VERSION})" in readme


def test_a_row_writes_the_documented_json_and_reads_back() -> None:
    clip_settings = {"model": "tiny:clip", "preprocessing": {"resize": 32}}
    row = Row(method="sdxl", settings_hash="abc", case_id="c1", seed=3, image="images/sdxl/c1/3.png",
              subjects=("cat", "dog"), method_settings={"steps": 2},
              metrics={"clip_t": {"value": 0.25, "details": {}, "settings": clip_settings, "higher_is_better": True}})
    table = SettingsTable()
    data = row.to_json(table)
    assert list(data) == DOCUMENTED_FIELDS and data["schema"] == ROW_SCHEMA_VERSION == 2
    assert list(data["metrics"]["clip_t"]) == DOCUMENTED_RESULT
    # the settings are in the table (run.json), the row names their digests
    assert data["metrics"]["clip_t"]["settings_ref"] == settings_hash(clip_settings)
    assert table.to_run() == {"metric_settings": {settings_hash(clip_settings): clip_settings},
                              "method_settings": {data["method_settings_ref"]: {"steps": 2}}}
    assert data["subjects"] == ["cat", "dog"] and data["benchmark"] is None and data["generation_seconds"] is None
    assert Row.from_json(json.loads(json.dumps(data)), "row", SettingsTable.from_run(json.loads(json.dumps(table.to_run())))) == row
    # inline (a shard file of a multi-process run; schema-1 rows): the same row
    inline = row.to_json()
    assert inline["metrics"]["clip_t"]["settings"] == clip_settings and inline["method_settings"] == {"steps": 2}
    assert Row.from_json(json.loads(json.dumps(inline))) == row
    assert Row.from_json(json.loads(json.dumps({**inline, "schema": 1}))) == row
    assert row.key == ("sdxl", "abc", "c1", 3)
    # the reports' fixed columns are the row's fields, by the same names and in the same order
    assert SAMPLE_COLUMNS == (*(f for f in ROW_FIELDS if f not in ("metrics", "method_settings")), "metric_details", "run_dir")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 3}, "schema: expected 1 or 2, got 3"),
        ({"metrics": {"clip_t": {"value": 1.0, "settings_ref": "0123456789ab"}}},
         "metrics.clip_t.settings_ref: no settings '0123456789ab' in the run's run.json metric_settings"),
        ({"method_settings_ref": "0123456789ab"}, "method_settings_ref: no settings '0123456789ab' in the run's run.json method_settings"),
        ({"seed": True}, "seed: expected an integer, got True"),
        ({"settings_hash": ""}, "settings_hash: expected a non-empty string"),
        ({"image": "/etc/passwd"}, "image: expected a path inside the run directory, got '/etc/passwd'"),
        ({"metrics": {"clip_t": 1.0}}, "metrics.clip_t: expected an object with a 'value'"),
        ({"generation_seconds": "slow"}, "generation_seconds: expected a number or null, got 'slow'"),
    ],
)
def test_the_run_store_refuses_a_malformed_row_naming_file_line_and_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    good = Row(method="m", settings_hash="h", case_id="c", seed=0, image="images/m/c/0.png").to_json()
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "seed": 1, **change}) + "\n")
    with pytest.raises(RelbenchError) as info:
        load_rows(path)
    assert str(info.value) == f"{path}: line 2: {message}"


def test_evaluate_writes_rows_the_store_and_the_reports_read_by_the_same_fields(tmp_path: Path) -> None:
    out = tmp_path / "run"
    options = EvaluateOptions(benchmark="demo", output=out, methods=["reference-collage"], metrics=["none"], limit=1,
                              seeds=(0, 1), progress=False)
    plan = plan_evaluation(options)
    (method,) = plan.methods
    assert (method.name, plan.width, plan.height, plan.seeds, [c.id for c in plan.cases]) == (
        "reference-collage", 64, 64, (0, 1), ["astronaut-hug-cat"])
    summary = evaluate(options)
    assert (summary.generated, summary.rows) == (2, 2)
    assert json.loads((out / "run.json").read_text())["methods"]["reference-collage"]["settings_hash"] == method.settings_hash
    rows = RunStore(out).rows()
    assert [r.key for r in rows] == [("reference-collage", method.settings_hash, "astronaut-hug-cat", s) for s in (0, 1)]
    first = rows[0]
    assert (first.benchmark, first.benchmark_version, first.profile, first.relation, first.relation_kind) == ("demo", "1", "tiny", "hug", "interaction")
    assert (first.subjects, first.subject_categories, first.prompt) == (("astronaut", "cat"), ("person", "animal"), "an astronaut hugging a cat")
    assert (first.width, first.height, first.image, first.metrics) == (64, 64, "images/reference-collage/astronaut-hug-cat/0.png", {})
    assert first.method_settings["method"] == "reference-collage"
    line = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert list(line) == DOCUMENTED_FIELDS
    run = json.loads((out / "run.json").read_text())
    assert run["method_settings"] == {line["method_settings_ref"]: first.method_settings}
    _, samples = load_run(out)
    table = samples.iloc[0]
    assert [table[name] for name in ("method", "case_id", "seed", "subjects", "image")] == [
        first.method, first.case_id, first.seed, first.subjects, first.image]


def test_plan_refuses_bad_options_before_any_model_loads(tmp_path: Path) -> None:
    base = {"benchmark": "demo", "output": tmp_path / "run", "methods": ["reference-collage"], "progress": False}
    with pytest.raises(RelbenchError, match="--stage: expected one of all, generate, score, got 'both'"):
        plan_evaluation(EvaluateOptions(**base, stage="both"))
    with pytest.raises(RelbenchError, match="--resolution: expected a multiple of 8 from 8 to 4096, got 12"):
        plan_evaluation(EvaluateOptions(**base, resolution=12))
    assert not (tmp_path / "run").exists()


def test_evaluate_and_generate_hand_the_method_the_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared lifecycle: both commands call use_benchmark before generate (generate did not)."""
    from relbench.methods.reference_collage.method import ReferenceCollage

    calls: list[tuple[str, str, Path]] = []

    def spy(self: Any, benchmark: Any, data_root: Path) -> None:
        calls.append((self.name, benchmark.name, data_root))

    monkeypatch.setattr(ReferenceCollage, "use_benchmark", spy)
    data_root = tmp_path / "data"
    evaluate(EvaluateOptions(benchmark="demo", output=tmp_path / "run", methods=["reference-collage"], metrics=["none"],
                             limit=1, data_root=data_root, progress=False))
    assert calls == [("reference-collage", "demo", data_root)]
    generate_one(method="reference-collage", output=tmp_path / "one.png", benchmark="demo", case_id="astronaut-hug-cat",
                 images=[], phrases=[], boxes=[], prompt=None, relation=None, seed=0, profile="tiny", resolution=None,
                 data_root=data_root, device="cpu", model_overrides={}, settings={})
    assert calls == [("reference-collage", "demo", data_root)] * 2


def test_generate_gives_reversion_the_benchmarks_exemplars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`relbench generate --case` with reversion (tiny) trains its token on the benchmark relation's
    reference pose images; without use_benchmark it found no exemplars and failed."""
    from skimage import data

    monkeypatch.setenv("RELBENCH_TRAINED_CACHE", str(tmp_path / "cache"))
    poses = tmp_path / "poses"
    poses.mkdir()
    for name, photo in (("p0.png", "astronaut"), ("p1.png", "coffee")):
        Image.fromarray(getattr(data, photo)()).convert("RGB").resize((48, 48)).save(poses / name)
    (poses / "text.json").write_text(json.dumps({"p0.png": ["astronaut {} rocket"], "p1.png": ["cup {} table"]}))
    spec = {
        "name": "posed", "version": "1",
        "subjects": [{"id": "astronaut", "class_noun": "astronaut", "category": "person", "images": ["skimage:astronaut"]},
                     {"id": "cat", "class_noun": "cat", "category": "animal", "images": ["skimage:chelsea"]}],
        "relations": [{"id": "hug", "phrase": "hugging", "kind": "interaction", "fits": [["person"], ["animal"]],
                       "reference_poses": [{"keypoints": f"./k{i}.json", "skeleton": "coco", "image": f"./poses/p{i}.png"} for i in (0, 1)]}],
        "cases": [{"id": "astronaut-hug-cat", "subjects": ["astronaut", "cat"], "relation": "hug",
                   "prompt": "an astronaut hugging a cat", "boxes": [[0.0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.9]]}],
    }
    (tmp_path / "benchmark.json").write_text(json.dumps(spec))
    out = generate_one(method="reversion", output=tmp_path / "r.png", benchmark=str(tmp_path / "benchmark.json"),
                       case_id="astronaut-hug-cat", images=[], phrases=[], boxes=[], prompt=None, relation=None, seed=0,
                       profile="tiny", resolution=None, data_root=tmp_path / "data", device="cpu", model_overrides={}, settings={})
    assert Image.open(out).size == (64, 64)
    (texts,) = (tmp_path / "cache").rglob("exemplars/text.json")  # the token was trained on the benchmark's poses
    assert json.loads(texts.read_text()) == {"000.png": ["astronaut {} rocket"], "001.png": ["cup {} table"]}


def test_evaluate_trains_ahead_then_generates_in_the_methods_batch_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench.methods.reference_collage.method import ReferenceCollage

    seen: list[tuple[str, list[tuple[str, int]]]] = []
    real = ReferenceCollage.generate
    monkeypatch.setattr(ReferenceCollage, "batch_size", 3)
    monkeypatch.setattr(ReferenceCollage, "train_ahead", lambda self, requests: seen.append(("train", [(r.case_id, r.seed) for r in requests])))
    monkeypatch.setattr(ReferenceCollage, "batch_order", lambda self, requests: [i for i in range(len(requests)) if requests[i].seed == 1]
                        + [i for i in range(len(requests)) if requests[i].seed == 0])
    monkeypatch.setattr(ReferenceCollage, "generate", lambda self, requests: seen.append(("generate", [(r.case_id, r.seed) for r in requests]))
                        or real(self, requests))
    summary = evaluate(EvaluateOptions(benchmark="demo", output=tmp_path / "run", methods=["reference-collage"], metrics=["none"],
                                       limit=2, seeds=(0, 1), progress=False))
    cases = ["astronaut-hug-cat", "astronaut-carry-coffee"]
    assert seen == [
        ("train", [(c, s) for c in cases for s in (0, 1)]),  # every request first, in the runner's order
        ("generate", [(cases[0], 1), (cases[1], 1), (cases[0], 0)]),  # then the method's order, in batches of its size
        ("generate", [(cases[1], 0)]),
    ]
    assert summary.rows == 4


def test_a_batch_order_that_is_not_a_permutation_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench.methods.reference_collage.method import ReferenceCollage

    monkeypatch.setattr(ReferenceCollage, "batch_order", lambda self, requests: [0, 0])
    with pytest.raises(RelbenchError, match="method 'reference-collage': batch_order returned 2 indices, not an order of the 2 requests"):
        evaluate(EvaluateOptions(benchmark="demo", output=tmp_path / "run", methods=["reference-collage"], metrics=["none"],
                                 limit=1, seeds=(0, 1), progress=False))
