"""The files a run's cases read, and their sha256: part of what a run computes.

A run's images and scores depend on the bytes of the reference files, not only on the spec that
names them: a reference photo replaced between two invocations would silently mix rows made from
the old file with rows made from the new one. So ``run.json`` records, under ``inputs``, the sha256
of every file the benchmark names for the run's cases, and a resume that finds one changed is
refused (``relbench.runstore.merge_config``); ``relbench data validate --run RUN_DIR`` compares the
same digests with the same functions, so the two always agree.

* Which files: for each case, its subjects' reference images and masks, and its relation's
  reference poses (keypoint file and its optional ``_visibility.pth`` beside it, image, masks):
  every file the spec names for those cases, whichever methods and metrics the run uses (one rule
  for every run).
* Keyed by the spec's reference (``dreambench/dog/00.jpg``, ``./imgs/a.png``, ``skimage:coffee``),
  so moving the data root keeps the identity; each entry also records the path it was read from.
* ``skimage:<name>`` references are hashed like any file: the bytes of the photo inside the
  installed scikit-image, so an upgrade that changes a bundled photo is detected too.
* A file that does not exist is not recorded (the code that needs it reports it); the subjects'
  files are checked to exist before a run starts.
* Cost: each file is read once per run start, streamed through sha256 (no decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from relbench.benchmark import Benchmark, Case
from relbench.data_root import resolve_path
from relbench.errors import Problem, RelbenchError
from relbench.hashing import file_sha256
from relbench.keypoints import visibility_file

# run.json: {"inputs": {reference: {"path": str, "sha256": hex}}}
InputDigests = dict[str, dict[str, str]]


def case_file_refs(benchmark: Benchmark, cases: Sequence[Case]) -> list[str]:
    """Every file reference the cases read, each once, in case order."""
    refs: list[str] = []
    for case in cases:
        for sid in case.subjects:
            subject = benchmark.subjects[sid]
            refs.extend(subject.images)
            refs.extend(subject.masks)
        for pose in benchmark.relations[case.relation].reference_poses:
            refs.append(pose.keypoints)
            refs.append(_visibility_ref(pose.keypoints))
            if pose.image:
                refs.append(pose.image)
            refs.extend(pose.masks)
    return list(dict.fromkeys(refs))


def _visibility_ref(keypoints_ref: str) -> str:
    """The reference of a keypoint file's visibility file: the same folder, spelled as the spec
    spells it (``./`` kept: it says where the reference is resolved)."""
    name = keypoints_ref.replace("\\", "/").rsplit("/", 1)[-1]
    return keypoints_ref[: len(keypoints_ref) - len(name)] + visibility_file(Path(name)).name


def input_digests(benchmark: Benchmark, cases: Sequence[Case], data_root: Path) -> InputDigests:
    """``{reference: {"path", "sha256"}}`` of every existing file the cases read (each hashed once)."""
    by_path: dict[Path, str] = {}
    out: InputDigests = {}
    for ref in case_file_refs(benchmark, cases):
        path = resolve_path(ref, data_root, benchmark.spec_dir)
        if not path.is_file():
            continue
        if path not in by_path:
            by_path[path] = file_sha256(path)
        out[ref] = {"path": str(path), "sha256": by_path[path]}
    return out


def changed_inputs(recorded: InputDigests | None, current: InputDigests) -> list[str]:
    """The references whose file now has other bytes than ``recorded`` says (None: nothing recorded)."""
    recorded = recorded or {}
    return [ref for ref, entry in current.items() if ref in recorded and recorded[ref].get("sha256") != entry["sha256"]]


def changed_message(ref: str, recorded: InputDigests, current: InputDigests, run_dir: Path) -> str:
    """One line: which file changed, its digests, and what to do."""
    old, new = recorded[ref]["sha256"], current[ref]["sha256"]
    return (f"{current[ref]['path']}: reference file {ref!r} changed since the run in {run_dir} read it "
            f"(sha256 {old[:12]}... now {new[:12]}...); its stored images and scores used the old file: "
            "put the old file back or use a new --output directory")


def check_run_inputs(run_dir: Path, benchmark: Benchmark, data_root: Path) -> tuple[list[Problem], str]:
    """``relbench data validate --run``: the run's reference files against its run.json, with the
    functions a resume uses. Returns the problems and a note for the summary line."""
    from relbench.runstore import RunStore

    store = RunStore(run_dir)
    run = store.read_run()
    if run is None:
        raise RelbenchError(f"{store.run_json}: not found; --run expects a folder made by `relbench evaluate`")
    known = {case.id: case for case in benchmark.cases}
    missing = [case_id for case_id in run["cases"] if case_id not in known]
    if missing:
        return [Problem(str(store.run_json), "cases", f"case {missing[0]!r} is not in {benchmark.label}; the run was made from another spec")], ""
    recorded = run.get("inputs")
    if recorded is None:
        return [], f"; {store.run_json} records no reference-file sha256 (an older relbench): nothing to compare"
    current = input_digests(benchmark, [known[case_id] for case_id in run["cases"]], data_root)
    problems = [Problem(str(store.run_json), f"inputs[{ref}]", changed_message(ref, recorded, current, run_dir))
                for ref in changed_inputs(recorded, current)]
    matching = sum(1 for ref in current if ref in recorded) - len(problems)
    return problems, f"; {matching} reference files match {store.run_json}"
