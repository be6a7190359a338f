"""The benchmark data model, spec parsing, and validation of every kind of bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from relbench.benchmark import RelationKind
from relbench.benchmarks import load_benchmark, spec_path_for
from relbench.data_root import DATA_ROOT_ENV, load_image, resolve_data_root, resolve_path
from relbench.errors import RelbenchError, SpecError, UnknownNameError
from relbench.input_files import case_file_refs
from relbench.spec import check_files, load_spec, parse_spec, validate_spec


def good_spec() -> dict[str, Any]:
    return {
        "name": "mini",
        "version": "2",
        "description": "two subjects, one relation",
        "subjects": [
            {"id": "dog", "class_noun": "dog", "category": "animal", "images": ["subjects/dog/0.png", "subjects/dog/1.png"],
             "masks": ["subjects/dog/0_mask.png", "subjects/dog/1_mask.png"]},
            {"id": "bear", "class_noun": "stuffed animal", "category": "plush", "images": ["./local/bear.png"]},
        ],
        "relations": [
            {"id": "hug", "phrase": "hugging", "kind": "interaction", "fits": [["animal", "plush"], ["animal", "plush"]],
             "reference_poses": [{"keypoints": "poses/hug0.pth", "skeleton": "ap10k", "image": "poses/hug0.png",
                                  "masks": ["poses/hug0_m0.png", "poses/hug0_m1.png"]}]},
        ],
        "cases": [
            {"id": "dog-hug-bear", "subjects": ["dog", "bear"], "relation": "hug", "prompt": "a dog hugging a stuffed animal",
             "boxes": [[0.0, 0.2, 0.55, 0.85], [0.55, 0.26, 0.95, 0.9]]},
        ],
    }


def write_files(root: Path, spec_dir: Path) -> None:
    """Every file good_spec() names, as real small images and a keypoint tensor."""
    import torch

    for rel in ["subjects/dog/0.png", "subjects/dog/1.png", "poses/hug0.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / rel)
    for rel in ["subjects/dog/0_mask.png", "subjects/dog/1_mask.png", "poses/hug0_m0.png", "poses/hug0_m1.png"]:
        size = (40, 30)
        Image.new("L", size, 255).save(root / rel)
    (spec_dir / "local").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (0, 0, 255)).save(spec_dir / "local" / "bear.png")
    torch.save(torch.rand(2, 17, 2), root / "poses" / "hug0.pth")


def test_good_spec_parses_into_the_data_model(tmp_path: Path) -> None:
    bench, problems = parse_spec(good_spec(), "mini.yaml")
    assert problems == []
    assert bench is not None
    assert bench.label == "mini v2"
    assert bench.subjects["bear"].class_noun == "stuffed animal"
    hug = bench.relations["hug"]
    assert hug.kind is RelationKind.INTERACTION and hug.arity == 2
    assert hug.reference_poses[0].masks == ("poses/hug0_m0.png", "poses/hug0_m1.png")
    case = bench.case("dog-hug-bear")
    assert case.subjects == ("dog", "bear")
    assert case.boxes[1] == (0.55, 0.26, 0.95, 0.9)
    assert case_file_refs(bench, bench.cases)[:3] == ["subjects/dog/0.png", "subjects/dog/1.png", "subjects/dog/0_mask.png"]


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda s: s.pop("name"), "name", "missing"),
        (lambda s: s.update(version=""), "version", "non-empty string"),
        (lambda s: s.update(subjects="dog"), "subjects", "expected a non-empty list"),
        (lambda s: s["subjects"][0].update(id="Dog!"), "subjects[Dog!].id", "not a valid id"),
        (lambda s: s["subjects"][1].update(id="dog"), "subjects[dog].id", "duplicate subject id"),
        (lambda s: s["subjects"][0].pop("class_noun"), "subjects[dog].class_noun", "missing"),
        (lambda s: s["subjects"][0].update(images=[]), "subjects[dog].images", "non-empty list"),
        (lambda s: s["subjects"][0].update(masks=["a.png"]), "subjects[dog].masks", "one mask per image (2), got 1"),
        (lambda s: s["relations"][0].update(kind="friendly"), "relations[hug].kind", "interaction, spatial, action"),
        (lambda s: s["relations"][0].update(fits=[["animal"]]), "relations[hug].fits", "at least 2 roles"),
        (lambda s: s["relations"][0]["reference_poses"][0].update(skeleton="smpl"),
         "relations[hug].reference_poses[0].skeleton", "ap10k"),
        (lambda s: s["cases"][0].update(relation="kiss"), "cases[dog-hug-bear].relation", "unknown relation 'kiss'"),
        (lambda s: s["cases"][0].update(subjects=["dgo", "bear"]), "cases[dog-hug-bear].subjects[0]", "did you mean 'dog'"),
        (lambda s: s["cases"][0].update(subjects=["dog", "dog"]), "cases[dog-hug-bear].subjects", "appears twice"),
        (lambda s: s["cases"][0].update(boxes=[[0, 0, 1, 1]]), "cases[dog-hug-bear].boxes", "one box per subject (2)"),
        (lambda s: s["cases"][0]["boxes"].__setitem__(0, [0, 0, 1.5, 1]), "cases[dog-hug-bear].boxes[0]", "normalised to [0, 1]"),
        (lambda s: s["cases"][0]["boxes"].__setitem__(1, [0.5, 0.5, 0.4, 0.9]), "cases[dog-hug-bear].boxes[1]", "x0 < x1"),
        (lambda s: s["cases"][0]["boxes"].__setitem__(1, [0.5, "a", 0.4, 0.9]), "cases[dog-hug-bear].boxes[1]", "4 numbers"),
        (lambda s: s["cases"][0].update(prompt=None), "cases[dog-hug-bear].prompt", "missing"),
        (lambda s: s["cases"].append(copy.deepcopy(s["cases"][0])), "cases[dog-hug-bear].id", "duplicate case id"),
        (lambda s: s["relations"][0].update(fits=[["animal"], ["animal"]]), "cases[dog-hug-bear].subjects[1]",
         "category 'plush') does not fit role 1"),
    ],
)
def test_each_bad_input_is_reported_with_file_field_and_problem(mutate: Any, field: str, message: str) -> None:
    spec = good_spec()
    mutate(spec)
    bench, problems = parse_spec(spec, "mini.yaml")
    assert bench is None
    matching = [p for p in problems if p.field == field]
    assert matching, f"no problem for {field}; got {[str(p) for p in problems]}"
    assert message in matching[0].message
    assert str(matching[0]).startswith(f"mini.yaml: {field}: ")


def test_all_problems_are_reported_at_once() -> None:
    spec = good_spec()
    spec["subjects"][0]["category"] = ""
    spec["cases"][0]["prompt"] = ""
    spec["relations"][0]["kind"] = "x"
    _, problems = parse_spec(spec, "mini.yaml")
    fields = {p.field for p in problems}
    assert {"subjects[dog].category", "cases[dog-hug-bear].prompt", "relations[hug].kind"} <= fields


def test_top_level_that_is_not_a_mapping() -> None:
    _, problems = parse_spec(["a", "list"], "x.json")
    assert [str(p) for p in problems] == ["x.json: (top level): expected a mapping with name, version, subjects, relations, cases; got list"]


def test_load_spec_reads_yaml_and_json_and_raises_spec_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(good_spec()))
    (tmp_path / "a.json").write_text(json.dumps(good_spec()))
    assert load_spec(tmp_path / "a.yaml") == load_spec(tmp_path / "a.json")
    bad = good_spec()
    bad["cases"][0]["relation"] = "kiss"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "bad.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'bad.yaml'}: cases[dog-hug-bear].relation: unknown relation")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken.yaml", "name: [unclosed", "not valid YAML"),
        ("broken.json", "{\"name\": ", "not valid JSON"),
        ("spec.txt", "name: x", "unsupported spec format"),
    ],
)
def test_unreadable_spec_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(RelbenchError) as info:
        load_spec(tmp_path / name)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(RelbenchError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_check_files_accepts_a_complete_data_root(tmp_path: Path) -> None:
    root, spec_dir = tmp_path / "data", tmp_path / "spec"
    write_files(root, spec_dir)
    (spec_dir / "mini.yaml").write_text(yaml.safe_dump(good_spec()))
    bench, problems, n_images = validate_spec(spec_dir / "mini.yaml", root)
    assert problems == []
    assert n_images == 8  # 2 dog images + 2 masks + bear + pose image + 2 pose masks
    assert bench is not None and bench.spec_dir == spec_dir


def test_check_files_reports_missing_truncated_and_mismatched_files(tmp_path: Path) -> None:
    import torch

    root, spec_dir = tmp_path / "data", tmp_path / "spec"
    write_files(root, spec_dir)
    (root / "subjects/dog/1.png").unlink()
    data = (root / "poses/hug0.png").read_bytes()
    (root / "poses/hug0.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.new("L", (10, 10)).save(root / "subjects/dog/0_mask.png")  # wrong size
    torch.save(torch.rand(2, 17, 4), root / "poses" / "hug0.pth")  # wrong shape
    (spec_dir / "mini.yaml").write_text(yaml.safe_dump(good_spec()))
    _, problems, _ = validate_spec(spec_dir / "mini.yaml", root)
    by_field = {p.field: p.message for p in problems}
    assert "image not found" in by_field["subjects[dog].images[1]"]
    assert by_field["relations[hug].reference_poses[0].image"] == f"{root / 'poses/hug0.png'}: cannot read image: image file is truncated"
    assert by_field["subjects[dog].masks[0]"] == "mask size (10, 10) does not match image size (40, 30)"
    assert "expected shape (instances, keypoints, 2), or (instances, keypoints, 3) with a visibility channel, got (2, 17, 4)" \
        in by_field["relations[hug].reference_poses[0].keypoints"]


def test_keypoints_outside_unit_square_and_non_tensor_pickles(tmp_path: Path) -> None:
    import torch

    root, spec_dir = tmp_path / "data", tmp_path / "spec"
    write_files(root, spec_dir)
    torch.save(torch.full((2, 17, 2), 1.5), root / "poses" / "hug0.pth")
    bench, _ = parse_spec(good_spec(), "mini.yaml")
    assert bench is not None
    problems, _ = check_files(bench, root)
    assert any("normalised to [0, 1]" in p.message for p in problems)
    torch.save({"not": "a tensor"}, root / "poses" / "hug0.pth")
    problems, _ = check_files(bench, root)
    assert any("expected a tensor" in p.message for p in problems)
    (root / "poses" / "hug0.pth").write_bytes(b"garbage")
    problems, _ = check_files(bench, root)
    assert any("not a readable keypoint tensor file" in p.message for p in problems)


def test_reference_pose_with_a_visibility_channel_is_valid(tmp_path: Path) -> None:
    import torch

    root, spec_dir = tmp_path / "data", tmp_path / "spec"
    write_files(root, spec_dir)
    poses = torch.cat([torch.rand(2, 17, 2), torch.ones(2, 17, 1)], -1)
    poses[0, 3] = torch.tensor([-1.0, -1.0, 0.0])  # hidden: any coordinate
    torch.save(poses, root / "poses" / "hug0.pth")
    (spec_dir / "mini.yaml").write_text(yaml.safe_dump(good_spec()))
    assert validate_spec(spec_dir / "mini.yaml", root)[1] == []  # the old check refused the (x, y, v) form
    poses[0, 3, 2] = 1.0  # now visible: its coordinates must be in [0, 1]
    torch.save(poses, root / "poses" / "hug0.pth")
    problems = validate_spec(spec_dir / "mini.yaml", root)[1]
    assert [p.field for p in problems] == ["relations[hug].reference_poses[0].keypoints"]
    assert "visible keypoints must be normalised to [0, 1], got values in [-1.000" in problems[0].message


def test_data_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root() == tmp_path / "cache" / "relbench" / "data"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "opt") == tmp_path / "opt"


def test_image_references(tmp_path: Path) -> None:
    assert resolve_path("a/b.png", tmp_path) == tmp_path / "a/b.png"
    assert resolve_path("./b.png", tmp_path, tmp_path / "spec") == tmp_path / "spec" / "b.png"
    assert resolve_path(str(tmp_path / "abs.png"), Path("/elsewhere")) == tmp_path / "abs.png"
    astronaut = load_image("skimage:astronaut", tmp_path)
    assert astronaut.size == (512, 512) and astronaut.mode == "RGB"
    assert load_image("skimage:camera", tmp_path).mode == "RGB"  # grey-scale photo converted
    with pytest.raises(RelbenchError, match="unknown bundled photo"):
        load_image("skimage:nothing", tmp_path)
    with pytest.raises(RelbenchError, match="image not found.*relbench data download"):
        load_image("missing.png", tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(RelbenchError, match="cannot read image"):
        load_image("bad.png", tmp_path)


def test_builtin_benchmarks_and_unknown_names() -> None:
    demo = load_benchmark("demo")
    assert demo.label == "demo v1" and len(demo.cases) >= 3
    assert all(len(c.subjects) == 2 for c in demo.cases)
    assert all(ref.startswith("skimage:") for ref in case_file_refs(demo, demo.cases))
    problems, n = check_files(demo, Path("/nonexistent"))
    assert problems == [] and n == 4
    with pytest.raises(UnknownNameError, match="Did you mean 'demo'"):
        spec_path_for("dem")
