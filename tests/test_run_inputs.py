"""Reference files are part of a run: run.json records their sha256, a resume with a replaced one is
refused naming it, and `relbench data validate --run` reports the same files with the same digests."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from relbench.errors import RelbenchError
from relbench.input_files import case_file_refs, check_run_inputs, file_sha256, input_digests
from relbench.runner import EvaluateOptions, evaluate

REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    """A two-subject spec whose images live beside it (``./imgs/...``), one case."""
    write_image(tmp_path / "bench" / "imgs" / "dog.png", (200, 120, 40))
    write_image(tmp_path / "bench" / "imgs" / "cat.png", (40, 90, 200))
    data = {
        "name": "inputs-test", "version": "1",
        "subjects": [{"id": "dog", "class_noun": "dog", "category": "animal", "images": ["./imgs/dog.png"]},
                     {"id": "cat", "class_noun": "cat", "category": "animal", "images": ["./imgs/cat.png"]}],
        "relations": [{"id": "near", "phrase": "next to", "kind": "spatial", "fits": [["animal"], ["animal"]]}],
        "cases": [{"id": "dog-near-cat", "subjects": ["dog", "cat"], "relation": "near", "prompt": "a dog next to a cat",
                   "boxes": [[0.0, 0.2, 0.5, 0.9], [0.5, 0.2, 1.0, 0.9]]}],
    }
    path = tmp_path / "bench" / "benchmark.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(spec: Path, out: Path):
    return evaluate(EvaluateOptions(benchmark=str(spec), output=out, methods=["reference-collage"], metrics=["none"], progress=False))


def test_resume_after_a_reference_image_is_replaced_is_refused_naming_it(spec: Path, tmp_path: Path) -> None:
    from relbench.benchmarks import load_benchmark

    out = tmp_path / "run"
    run(spec, out)
    recorded = json.loads((out / "run.json").read_text())["inputs"]
    dog, cat = spec.parent / "imgs" / "dog.png", spec.parent / "imgs" / "cat.png"
    assert recorded == {"./imgs/dog.png": {"path": str(dog), "sha256": hashlib.sha256(dog.read_bytes()).hexdigest()},
                        "./imgs/cat.png": {"path": str(cat), "sha256": hashlib.sha256(cat.read_bytes()).hexdigest()}}

    # The same bytes written again (a new mtime): the run resumes and has nothing to do.
    cat.write_bytes(cat.read_bytes())
    assert run(spec, out).skipped == 1

    # Other bytes under the same name: refused, one line naming the file and what to do.
    old_bytes = cat.read_bytes()
    write_image(cat, (41, 90, 200))
    with pytest.raises(RelbenchError) as error:
        run(spec, out)
    message = str(error.value)
    assert message.startswith(f"{cat}: reference file './imgs/cat.png' changed since the run in {out} read it (sha256 ")
    assert "use a new --output directory" in message and "\n" not in message and "dog.png" not in message
    assert json.loads((out / "run.json").read_text())["inputs"] == recorded  # the refused resume wrote nothing

    # `data validate --run` finds the same file, with the same message.
    benchmark = load_benchmark(str(spec))
    problems, _ = check_run_inputs(out, benchmark, tmp_path)
    assert [str(p) for p in problems] == [f"{out / 'run.json'}: inputs[./imgs/cat.png]: {message}"]

    cat.write_bytes(old_bytes)  # the original back: validate and resume agree again
    assert check_run_inputs(out, benchmark, tmp_path) == ([], f"; 2 reference files match {out / 'run.json'}")
    assert run(spec, out).skipped == 1


def test_a_run_json_without_hashes_gets_them_on_resume_with_a_warning(spec: Path, tmp_path: Path) -> None:
    from relbench.benchmarks import load_benchmark

    out = tmp_path / "run"
    run(spec, out)
    run_json = json.loads((out / "run.json").read_text())
    recorded = run_json.pop("inputs")
    (out / "run.json").write_text(json.dumps(run_json))  # as an older relbench wrote it
    benchmark = load_benchmark(str(spec))
    assert check_run_inputs(out, benchmark, tmp_path)[1].endswith("records no reference-file sha256 (an older relbench): nothing to compare")
    with pytest.warns(UserWarning, match=r"run.json records no sha256 of the reference files .* recording them now"):
        assert run(spec, out).skipped == 1
    assert json.loads((out / "run.json").read_text())["inputs"] == recorded


def test_files_are_the_cases_subject_and_reference_pose_files_each_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench import input_files
    from relbench.benchmark import Benchmark, Case, ReferencePose, Relation, RelationKind, Subject

    for name in ("a.png", "a_mask.png", "b.png", "pose.pth", "pose_visibility.pth", "pose.png", "m0.png", "m1.png", "unused.png"):
        (tmp_path / name).write_bytes(name.encode())
    pose = ReferencePose("pose.pth", "coco", "pose.png", ("m0.png", "m1.png"))
    relations = {"hug": Relation("hug", "hugging", RelationKind.INTERACTION, (("x",), ("x",)), (pose, ReferencePose("absent.pth", "coco"))),
                 "near": Relation("near", "next to", RelationKind.SPATIAL, (("x",), ("x",)))}
    subjects = {"a": Subject("a", "a", "x", ("a.png",), ("a_mask.png",)), "b": Subject("b", "b", "x", ("b.png",)),
                "c": Subject("c", "c", "x", ("unused.png",))}
    box = (0.0, 0.0, 1.0, 1.0)
    cases = (Case("1", ("a", "b"), "hug", "p", (box, box)), Case("2", ("b", "a"), "near", "p", (box, box)), Case("3", ("c", "a"), "near", "p", (box, box)))
    benchmark = Benchmark("t", "1", "", subjects, relations, cases)
    assert case_file_refs(benchmark, cases[:2]) == ["a.png", "a_mask.png", "b.png", "pose.pth", "pose_visibility.pth", "pose.png",
                                                    "m0.png", "m1.png", "absent.pth", "absent_visibility.pth"]
    hashed: list[Path] = []
    real = input_files.file_sha256
    monkeypatch.setattr(input_files, "file_sha256", lambda path: hashed.append(path) or real(path))
    digests = input_digests(benchmark, cases[:2], tmp_path)
    # absent.pth and absent_visibility.pth: no file; the visibility file beside pose.pth is read by the pose metric
    assert list(digests) == ["a.png", "a_mask.png", "b.png", "pose.pth", "pose_visibility.pth", "pose.png", "m0.png", "m1.png"]
    assert digests["pose.pth"] == {"path": str(tmp_path / "pose.pth"), "sha256": hashlib.sha256(b"pose.pth").hexdigest()}
    assert sorted(hashed) == sorted(tmp_path / ref for ref in digests)  # each file read once


def test_demo_run_records_the_bundled_photos_and_validate_checks_them(tmp_path: Path) -> None:
    """The demo's ``skimage:`` photos are hashed as the files inside scikit-image."""
    from relbench.data_root import resolve_path

    out = tmp_path / "demo"
    summary = evaluate(EvaluateOptions(benchmark="demo", output=out, methods=["reference-collage"], metrics=["none"], progress=False))
    assert summary.generated == 4
    inputs = json.loads((out / "run.json").read_text())["inputs"]
    assert sorted(inputs) == ["skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:rocket"]
    for ref, entry in inputs.items():
        path = resolve_path(ref, tmp_path)
        assert entry == {"path": str(path), "sha256": file_sha256(path)}
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    def validate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", "data", "validate", "--benchmark", "demo", "--run", str(out), *args],
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)

    ok = validate()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith(f"; 4 reference files match {out / 'run.json'}")
    run_json = json.loads((out / "run.json").read_text())
    run_json["inputs"]["skimage:coffee"]["sha256"] = "0" * 64  # as if the photo had changed since
    (out / "run.json").write_text(json.dumps(run_json))
    changed = validate()
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    coffee = resolve_path("skimage:coffee", tmp_path)
    assert changed.stdout.splitlines() == [
        f"{out / 'run.json'}: inputs[skimage:coffee]: {coffee}: reference file 'skimage:coffee' changed since the run in {out} "
        f"read it (sha256 000000000000... now {file_sha256(coffee)[:12]}...); its stored images and scores used the old file: "
        "put the old file back or use a new --output directory"
    ]
