"""Hostile run folders: every fault of a run directory ends in one `error:` line (exit 2) or is
repaired by the same command, and never loses a stored result.

One test per class: images deleted, truncated or damaged after their row was stored; a failed
first start; damaged rows; rows whose image points outside the run; a full disk and a folder that
cannot be written. The commands run in this process through ``cli.main`` (the tiny profile, the
demo benchmark, the cheap ``reference-collage`` method), so each test takes seconds.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from relbench.errors import RelbenchError
from relbench.rows import Row
from relbench.runstore import REJECTED_FILE, RunStore, read_rows

CASES = ("astronaut-hug-cat", "astronaut-carry-coffee", "cat-next-to-rocket", "cat-on-top-of-coffee")  # the demo's, in order
METHOD = ["-m", "reference-collage", "-b", "demo", "-q"]
NO_SPACE = "no space left on device; free space and run the same command again"


def relbench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``relbench ARGS`` through the console-script entry (``cli.main``): exit code, stdout, stderr."""
    import cli

    monkeypatch.setattr(sys, "argv", ["relbench", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    """The `error:` line of a command that must end with exactly one, exit 2, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def keys_on_disk(out: Path) -> Counter[tuple[str, str, str, int]]:
    """(method, settings hash, case, seed) of every line of samples.jsonl."""
    return Counter((r["method"], r["settings_hash"], r["case_id"], r["seed"]) for r in read_rows(out / "samples.jsonl"))


def assert_complete(out: Path, methods: int = 1) -> None:
    """Exactly one line per (method, case, seed) and every image decodes."""
    keys = keys_on_disk(out)
    assert sorted(k[2] for k in keys) == sorted(CASES * methods) and set(keys.values()) == {1}, keys
    for row in read_rows(out / "samples.jsonl"):
        with Image.open(out / row["image"]) as image:
            image.load()
    assert not list(out.rglob("*.tmp"))


def image_of(out: Path, case: str) -> Path:
    return out / "images" / "reference-collage" / case / "0.png"


# ------------------------------------------------------------------ images lost after their row


def test_a_missing_truncated_or_damaged_image_is_made_again_and_its_row_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert relbench(monkeypatch, capsys, "evaluate", *METHOD, "--stage", "generate", "-o", str(out))[0] == 0
    original = {case: image_of(out, case).read_bytes() for case in CASES}
    deleted, truncated, damaged, intact = CASES
    image_of(out, deleted).unlink()
    image_of(out, truncated).write_bytes(original[truncated][: len(original[truncated]) // 2])
    middle = bytearray(original[damaged])  # header and end intact: only decoding finds it
    middle[len(middle) // 2 : len(middle) // 2 + 16] = bytes(16)
    image_of(out, damaged).write_bytes(bytes(middle))
    intact_mtime = image_of(out, intact).stat().st_mtime_ns

    # Scoring refuses to invent scores for an image that is not there, naming it and the fix.
    code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--stage", "score", "--metrics", "clip_t", "-o", str(out))
    line = one_error_line(code, err)
    assert "is missing or unreadable (and 2 more)" in line and "without --stage score" in line

    # A plain resume makes the three again (the cheap check finds two, decoding the third) and
    # scores them; the intact image is kept.
    with pytest.warns(UserWarning) as warned:
        code, stdout, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "clip_t", "-o", str(out))
    assert code == 0, err
    messages = [str(w.message) for w in warned if "regenerating" in str(w.message)]
    assert messages == ["regenerating 2 images that are missing or unreadable (their rows are replaced)",
                        "regenerating 1 image that is missing or unreadable (their rows are replaced)"]
    assert "4 rows (3 images generated" in stdout
    assert_complete(out)
    for case in CASES:  # reference-collage is deterministic: the same bytes again
        assert image_of(out, case).read_bytes() == original[case]
    assert image_of(out, intact).stat().st_mtime_ns == intact_mtime
    rows = {row.case_id: row for row in RunStore(out).rows()}
    assert all(isinstance(rows[case].metrics["clip_t"]["value"], float) for case in CASES)

    # --stage generate makes a deleted image again too, and the resume after it has nothing to do.
    image_of(out, intact).unlink()
    with pytest.warns(UserWarning, match="regenerating 1 image that is missing"):
        code, stdout, _ = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--stage", "generate", "-o", str(out))
    assert code == 0 and "(1 images generated" in stdout and image_of(out, intact).read_bytes() == original[intact]
    code, stdout, _ = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "clip_t", "-o", str(out))
    assert code == 0 and "(0 images generated, 0 reused, 4 already done, 1 stored images scored)" in stdout
    assert_complete(out)


# ------------------------------------------------------------------ a failed first start


def test_a_failed_start_does_not_bind_the_folder_to_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relbench.methods.reference_collage.method import ReferenceCollage
    from relbench.metrics.clip import CLIPTScore

    out, fresh = tmp_path / "run", tmp_path / "fresh"
    real_generate = ReferenceCollage.generate

    def refuses_stretch(self: Any, requests: Any) -> Any:
        if self.config.fit == "stretch":  # as a model that refuses a setting only once it loads
            raise RelbenchError("simulated: the model cannot run with fit=stretch")
        return real_generate(self, requests)

    monkeypatch.setattr(ReferenceCollage, "generate", refuses_stretch)
    code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "--set",
                            "reference-collage.fit=stretch", "-o", str(out))
    assert "simulated" in one_error_line(code, err) and (out / "run.json").is_file()
    # The corrected command in the same folder runs: no row was stored with the failed settings.
    assert relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(out))[0] == 0
    assert_complete(out)
    hashes = {r["settings_hash"] for r in read_rows(out / "samples.jsonl")}
    assert hashes == {json.loads((out / "run.json").read_text())["methods"]["reference-collage"]["settings_hash"]}
    # Once rows are stored the settings bind the folder.
    code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "--set",
                            "reference-collage.fit=stretch", "-o", str(out))
    assert "method 'reference-collage' was run here with other settings" in one_error_line(code, err)

    # A start that saved images and then failed (here: scoring): the corrected settings never
    # reuse those images, made with the forgotten ones.
    monkeypatch.setattr(ReferenceCollage, "generate", real_generate)
    monkeypatch.setattr(CLIPTScore, "score", lambda self, samples: (_ for _ in ()).throw(RelbenchError("simulated: scoring failed")))
    stretched = tmp_path / "stretched"
    code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "clip_t", "--set",
                            "reference-collage.fit=stretch", "-o", str(stretched))
    assert "simulated: scoring failed" in one_error_line(code, err)
    assert image_of(stretched, CASES[0]).is_file() and not read_rows(stretched / "samples.jsonl")
    assert relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(stretched))[0] == 0
    assert relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(fresh))[0] == 0
    for case in CASES:
        assert image_of(stretched, case).read_bytes() == image_of(fresh, case).read_bytes()


def test_a_metric_without_a_stored_value_may_change_its_model(tmp_path: Path) -> None:
    def config(model: str, hash_: str = "h1") -> dict[str, Any]:
        return {"benchmark": {"name": "demo"}, "profile": "tiny", "seeds": [0], "resolution": [64, 64], "cases": ["a"],
                "metrics": {"clip_t": {"model": {"id": model}}}, "methods": {"m": {"settings_hash": hash_, "settings": {}}}}

    env = {"time": "t0"}
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config("clip-a"), env) as writer:
        writer.append(Row(method="m", settings_hash="h1", case_id="a", seed=0, image="images/m/a/0.png"))  # no value yet
    with store.open_for_writing(config("clip-b"), env) as writer:
        writer.replace(Row(method="m", settings_hash="h1", case_id="a", seed=0, image="images/m/a/0.png",
                           metrics={"clip_t": {"value": 0.5}}))
    assert json.loads(store.run_json.read_text())["metrics"]["clip_t"]["model"] == {"id": "clip-b"}
    with pytest.raises(RelbenchError, match="metric 'clip_t' was computed here with another model"):
        store.open_for_writing(config("clip-c"), env)


# ------------------------------------------------------------------ damaged rows


def test_damaged_rows_are_moved_aside_by_evaluate_and_refused_by_the_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(out))[0] == 0
    samples = out / "samples.jsonl"
    lines = samples.read_text().splitlines()
    no_hash = {k: v for k, v in json.loads(lines[1]).items() if k != "settings_hash"}  # CASES[1]'s row, broken
    no_method = {k: v for k, v in json.loads(lines[2]).items() if k != "method"}
    damaged = ["{}", json.dumps(no_hash), json.dumps(no_method)]
    samples.write_text("\n".join([lines[0], damaged[0], damaged[1], lines[3], damaged[2]]) + "\n")
    other = RunStore(out).run_json.read_text()
    a_hash = json.loads(other)["methods"]["reference-collage"]["settings_hash"]

    # Readers refuse, naming the file, line and field: never a KeyError traceback.
    for args in (["report", str(out)], ["leaderboard", str(out), "-o", str(tmp_path / "board.csv")],
                 ["compare", str(out), "-a", "reference-collage", "-b", f"reference-collage@{a_hash}"]):
        code, _, err = relbench(monkeypatch, capsys, *args)
        assert one_error_line(code, err) == f"error: {samples}: line 2: method: expected a non-empty string"

    # evaluate (--stage score too) moves them to samples.rejected.jsonl with one warning; the items
    # they stood for are made again by a run that generates.
    with pytest.warns(UserWarning) as warned:
        code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--stage", "score", "--metrics", "none", "-o", str(out))
    assert code == 0, err
    assert [str(w.message) for w in warned if REJECTED_FILE in str(w.message)] == [
        f"{samples}: line 2: method: expected a non-empty string (and 2 more): moved 3 damaged line(s) to "
        f"{out / REJECTED_FILE}; a run that generates makes their items again"]
    assert (out / REJECTED_FILE).read_text().splitlines() == damaged
    assert [k[2] for k in keys_on_disk(out)] == [json.loads(lines[0])["case_id"], json.loads(lines[3])["case_id"]]
    code, stdout, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(out))
    assert code == 0 and "4 rows (0 images generated, 2 reused, 2 already done" in stdout, err
    assert_complete(out)
    assert relbench(monkeypatch, capsys, "report", str(out))[0] == 0

    # A row a newer relbench wrote is not damage: refused, never moved aside.
    with open(samples, "a") as handle:
        handle.write(json.dumps({**json.loads(lines[0]), "schema": 3, "seed": 7}) + "\n")
    code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(out))
    assert one_error_line(code, err) == (f"error: {samples}: line 5: schema: expected 1 or 2, got 3: written by a newer relbench; "
                                         "upgrade relbench to resume this run")
    assert len((out / REJECTED_FILE).read_text().splitlines()) == 3


# ------------------------------------------------------------------ images outside the run


@pytest.mark.parametrize("image", ["/etc/passwd", "../outside.png", "images/../../outside.png", "C:/outside.png"])
def test_a_row_whose_image_is_outside_the_run_is_never_read(
    image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert relbench(monkeypatch, capsys, "evaluate", *METHOD, "--stage", "generate", "-o", str(out))[0] == 0
    Image.new("RGB", (64, 64), "red").save(tmp_path / "outside.png")  # a real image the row points at
    samples = out / "samples.jsonl"
    lines = samples.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "image": image})
    samples.write_text("\n".join(lines) + "\n")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1])

    expected = f"error: {samples}: line 1: image: expected a path inside the run directory, got {image!r}"
    for args in (["report", str(out)], ["leaderboard", str(out), "-o", str(tmp_path / "board.csv")],
                 ["compare", str(out), "-a", "reference-collage", "-b", "reference-collage"]):
        code, _, err = relbench(monkeypatch, capsys, *args)
        assert one_error_line(code, err) == expected
    assert not (out / "report").exists()
    # The scorer never opens it: the row is moved aside and its item made again inside the run.
    with pytest.warns(UserWarning, match="image: expected a path inside the run directory"):
        code, stdout, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "clip_t", "-o", str(out))
    assert code == 0 and "1 reused" in stdout, err
    assert_complete(out)
    assert not [path for path in opened if "outside" in path or path == "/etc/passwd"]
    assert {r.image for r in RunStore(out).rows()} == {f"images/reference-collage/{case}/0.png" for case in CASES}


# ------------------------------------------------------------------ full disk, read-only folder


def failing_fdopen(monkeypatch: pytest.MonkeyPatch, matches: Any, after: int = 0) -> list[str]:
    """Make the atomic writer's temporary file of a target that ``matches`` (its name) run out of
    space half-way through its bytes, from the ``after``-th such write on; returns the targets hit."""
    real = os.fdopen
    hits: list[str] = []
    seen = [0]

    class HalfFull:
        def __init__(self, handle: Any):
            self.handle = handle

        def __enter__(self) -> HalfFull:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = real(fd, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        name = Path(target).name
        if name.startswith(".") and name.endswith(".tmp") and matches(name[1:].rsplit(".", 2)[0]):
            seen[0] += 1
            if seen[0] > after:
                hits.append(target)
                return HalfFull(handle)
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    return hits


# run.json is written at the start, with the settings table before the first row that names its
# method settings (relbench.rows.SettingsTable), and at the end.
RUN_JSON_WRITES = {"run.json at the start": 0, "run.json before the first row": 1, "run.json at the end": 2}


@pytest.mark.parametrize("point", ["image", *RUN_JSON_WRITES])
def test_a_full_disk_ends_in_one_line_and_the_same_command_completes(
    point: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["evaluate", *METHOD, "--metrics", "none", "-o", str(out)]
    if point == "image":  # the third image of the batch, on the writer thread: two are saved before it (the resume reuses them)
        hits = failing_fdopen(monkeypatch, lambda name: name == "0.png", after=2)
        target = image_of(out, CASES[2])
    else:
        hits = failing_fdopen(monkeypatch, lambda name: name == "run.json", after=RUN_JSON_WRITES[point])
        target = out / "run.json"
    code, _, err = relbench(monkeypatch, capsys, *args)
    assert one_error_line(code, err) == f"error: {target}: {NO_SPACE}" and len(hits) == 1
    assert not list(out.rglob("*.tmp"))  # nothing half-written is left behind
    monkeypatch.undo()
    code, stdout, err = relbench(monkeypatch, capsys, *args)
    assert code == 0, err
    assert_complete(out)
    assert json.loads((out / "run.json").read_text())["updated"]


def test_a_failed_save_on_the_image_writer_thread_ends_in_one_line_and_the_resume_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images are written by a background thread (runstore.ImageSaver); its error is the command's."""
    from relbench import runstore

    out = tmp_path / "run"
    args = ["evaluate", *METHOD, "--seeds", "0,1", "--metrics", "none", "-o", str(out)]
    real_save, calls = runstore.atomic_save_image, [0]

    def full_at_the_third(image: Any, path: Path) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(image, path)

    monkeypatch.setattr(runstore, "atomic_save_image", full_at_the_third)
    code, _, err = relbench(monkeypatch, capsys, *args)
    # items in order (case, seed): the third is CASES[1] seed 0; none after it is written
    assert one_error_line(code, err) == f"error: {image_of(out, CASES[1])}: {NO_SPACE}"
    assert calls[0] == 3 and sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        f"images/reference-collage/{CASES[0]}/0.png", f"images/reference-collage/{CASES[0]}/1.png"]
    assert not keys_on_disk(out)  # the batch's rows wait for all its images
    monkeypatch.undo()
    code, stdout, err = relbench(monkeypatch, capsys, *args)
    assert code == 0 and "8 rows (6 images generated, 2 reused, 0 already done" in stdout, err
    keys = keys_on_disk(out)
    assert len(keys) == 8 and set(keys.values()) == {1}


def test_ctrl_c_keeps_the_rows_of_the_batches_made_and_the_resume_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows wait for their images on the writer thread: a Ctrl-C while the next batch is generated
    still stores the rows of the batches made before it."""
    from relbench.methods.reference_collage.method import ReferenceCollage

    out = tmp_path / "run"
    args = ["evaluate", *METHOD, "--metrics", "none", "-o", str(out)]
    real_generate, batches = ReferenceCollage.generate, [0]

    def interrupted_at_the_second_batch(self: Any, requests: Any) -> Any:
        batches[0] += 1
        if batches[0] == 2:
            raise KeyboardInterrupt
        return real_generate(self, requests)

    monkeypatch.setattr(ReferenceCollage, "batch_size", 2)
    monkeypatch.setattr(ReferenceCollage, "generate", interrupted_at_the_second_batch)
    code, _, err = relbench(monkeypatch, capsys, *args)
    assert code == 130 and "Traceback" not in err, err
    assert sorted(k[2] for k in keys_on_disk(out)) == sorted(CASES[:2])
    monkeypatch.undo()
    code, stdout, err = relbench(monkeypatch, capsys, *args)
    assert code == 0 and "4 rows (2 images generated, 0 reused, 2 already done" in stdout, err
    assert_complete(out)


def test_a_full_disk_while_appending_a_row_leaves_a_cut_short_line_the_resume_repairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relbench import runstore

    out = tmp_path / "run"
    args = ["evaluate", *METHOD, "--seeds", "0,1", "--metrics", "none", "-o", str(out)]
    appended = [0]

    class HalfFull:
        """samples.jsonl opened for appending: the fourth row gets half its bytes, then ENOSPC."""

        def __init__(self, handle: Any):
            self.handle = handle

        def write(self, data: bytes) -> int:
            appended[0] += 1
            if appended[0] == 4:
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    def half_full_open(path: Any, mode: str = "r", *rest: Any, **kwargs: Any) -> Any:
        handle = open(path, mode, *rest, **kwargs)
        return HalfFull(handle) if Path(path).name == "samples.jsonl" and "a" in mode else handle

    monkeypatch.setattr(runstore, "open", half_full_open, raising=False)
    code, _, err = relbench(monkeypatch, capsys, *args)
    assert one_error_line(code, err) == f"error: {out / 'samples.jsonl'}: {NO_SPACE}"
    data = (out / "samples.jsonl").read_bytes()
    assert data.count(b"\n") == 3 and not data.endswith(b"\n")  # three rows and half of the fourth
    monkeypatch.undo()
    code, stdout, err = relbench(monkeypatch, capsys, *args)
    # the images were all saved before the rows: the five items without a row reuse theirs
    assert code == 0 and "8 rows (0 images generated, 5 reused, 3 already done" in stdout, err
    keys = keys_on_disk(out)
    assert len(keys) == 8 and set(keys.values()) == {1}


def test_an_output_folder_that_cannot_be_written_ends_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """chmod 0o555 does not stop root (CI runs as root): the kernel's answer is simulated."""
    out = tmp_path / "run"
    args = ["evaluate", *METHOD, "--metrics", "none", "-o", str(out)]
    assert relbench(monkeypatch, capsys, *args)[0] == 0
    real_open, real_mkdir = os.open, Path.mkdir

    def read_only_open(path: Any, flags: int, *rest: Any, **kwargs: Any) -> int:
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *rest, **kwargs)

    def read_only_mkdir(self: Path, *rest: Any, **kwargs: Any) -> None:
        if str(self).startswith(str(out)) and not self.is_dir():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *rest, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    permission = "permission denied; make it writable or choose another output folder, then run the command again"
    code, _, err = relbench(monkeypatch, capsys, *args)
    assert one_error_line(code, err) == f"error: {out}: {permission}"
    code, _, err = relbench(monkeypatch, capsys, "evaluate", *METHOD, "--metrics", "none", "-o", str(out / "new"))
    assert one_error_line(code, err) == f"error: {out / 'new'}: {permission}"
    code, _, err = relbench(monkeypatch, capsys, "report", str(out))
    assert one_error_line(code, err) == f"error: {out / 'report'}: {permission}"
    monkeypatch.undo()
    assert_complete(out)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_a_read_only_output_folder_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["evaluate", *METHOD, "--metrics", "none", "-o", str(out)]
    assert relbench(monkeypatch, capsys, *args)[0] == 0
    (out / "images").chmod(0o555)
    out.chmod(0o555)
    try:
        code, _, err = relbench(monkeypatch, capsys, *args)
        assert one_error_line(code, err).startswith(f"error: {out}")
    finally:
        out.chmod(0o755)
        (out / "images").chmod(0o755)
