"""The run store: atomic rows, repair of a cut-short row, exactly-once keys, refused mismatches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relbench.errors import RelbenchError
from relbench.runstore import Row, RunStore, read_rows, settings_hash


def config(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "benchmark": {"name": "demo", "version": "1", "spec_sha256": "abc"},
        "profile": "tiny",
        "seeds": [0],
        "resolution": [64, 64],
        "cases": ["a", "b"],
        "metrics": {"clip_t": {"model": {"id": "tiny:clip", "revision": None}}},
        "methods": {"m1": {"settings_hash": "h1", "settings": {"x": 1}}},
    }
    base.update(changes)
    return base


def row(method: str = "m1", case: str = "a", seed: int = 0, shash: str = "h1", value: float = 1.0) -> Row:
    return Row(method=method, settings_hash=shash, case_id=case, seed=seed, image=f"images/{method}/{case}/{seed}.png",
               metrics={"clip_t": {"value": value}})


ENV = {"time": "t0", "relbench_version": "0", "git_commit": None, "packages": {}, "device": "cpu"}


def test_settings_hash_is_stable_and_order_independent() -> None:
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})
    assert len(settings_hash({})) == 12


def test_rows_are_appended_once_per_key_and_read_back(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row(case="a"))
        writer.append(row(case="a"))  # same key: ignored
        writer.append(row(case="b"))
    assert [r.case_id for r in store.rows()] == ["a", "b"]
    with store.open_for_writing(config(), ENV) as writer:
        assert writer.has(("m1", "h1", "a", 0)) and not writer.has(("m1", "h1", "a", 1))
        writer.append(row(case="a"))
    assert len(store.rows()) == 2
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["schema"] == 1 and run["created"] == "t0" and run["methods"]["m1"]["settings_hash"] == "h1"


def test_a_row_cut_short_by_a_kill_is_dropped_and_repaired(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row(case="a"))
    with open(store.samples_jsonl, "ab") as handle:
        handle.write(b'{"method": "m1", "settings_hash": "h1", "case_id": "b", "se')
    assert [r["case_id"] for r in read_rows(store.samples_jsonl)] == ["a"]
    with store.open_for_writing(config(), ENV) as writer:
        assert not writer.has(("m1", "h1", "b", 0))
        writer.append(row(case="b"))
    lines = store.samples_jsonl.read_text().splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == ["a", "b"]


def test_temporaries_a_killed_run_left_are_removed_when_it_resumes(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row(case="a"))
    folder = store.root / "images" / "m1" / "b"
    folder.mkdir(parents=True)
    left = [folder / ".0.png.0123456789ab.tmp", store.root / ".run.json.abcdef012345.tmp"]
    kept = [folder / ".0.png.0123456789a.tmp",  # 11 hex digits: not a name the atomic writer makes
            folder / "0.png.0123456789ab.tmp", store.root / "notes.tmp"]
    for path in (*left, *kept):
        path.write_bytes(b"half an image")
    with store.open_for_writing(config(), ENV) as writer:
        assert writer.has(("m1", "h1", "a", 0))
    assert [p.exists() for p in left] == [False, False]
    assert [p.exists() for p in kept] == [True, True, True]


def test_a_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(row().to_json()) + "\nnot json\n" + json.dumps(row(case="b").to_json()) + "\n")
    with pytest.raises(RelbenchError, match=r"samples.jsonl: line 2: not a valid JSON row"):
        read_rows(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(RelbenchError, match="line 1: expected a JSON object"):
        read_rows(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": [0, 1]}, "seeds: [0] != [0, 1]"),
        ({"profile": "full"}, 'profile: "tiny" != "full"'),
        ({"metrics": {"clip_t": {"model": {"id": "openai/clip", "revision": None}}}}, "metric 'clip_t' was computed here with another model"),
        ({"cases": ["a", "c"]}, "cases: [\"a\", \"b\"] != [\"a\", \"c\"]); case 'c' not in this run"),
        ({"resolution": [128, 128]}, "resolution"),
        # -b NAME now meaning a newer version than the run's: the message names the resuming option.
        ({"benchmark": {"name": "demo", "version": "2", "spec_sha256": "def"}}, "to resume it pass -b demo@1, or use"),
        ({"benchmark": {"name": "other", "version": "1", "spec_sha256": "abc"}}, 'different settings (benchmark: {"name": "demo"'),
    ],
)
def test_reusing_an_output_with_other_settings_is_refused(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row())  # settings bind the directory once a row made with them is stored
    with pytest.raises(RelbenchError) as info:
        store.open_for_writing(config(**changes), ENV)
    assert message in str(info.value) and "use a new --output directory" in str(info.value)


def test_a_method_may_be_added_on_a_subset_of_the_runs_cases(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row(case="a"))
        writer.append(row(case="b"))
    # One more method on case "b" only (`--relations hug`): it joins; the run keeps its two cases.
    subset = config(cases=["b"], methods={"m2": {"settings_hash": "h2", "settings": {}}})
    with store.open_for_writing(subset, ENV) as writer:
        writer.append(row(method="m2", case="b", shash="h2"))
    run = json.loads(store.run_json.read_text())
    assert run["cases"] == ["a", "b"] and set(run["methods"]) == {"m1", "m2"}
    assert sorted((r.method, r.case_id) for r in store.rows()) == [("m1", "a"), ("m1", "b"), ("m2", "b")]
    with store.open_for_writing(config(), ENV):  # the whole run's command still resumes it
        pass
    assert json.loads(store.run_json.read_text())["cases"] == ["a", "b"]


def test_metrics_may_be_added_and_keep_what_was_recorded(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV):
        pass
    run = json.loads(store.run_json.read_text())
    run["metrics"]["clip_t"]["settings"] = {"pooling": "x"}  # as a finished run records it
    store.run_json.write_text(json.dumps(run))
    dino = {"dino": {"model": {"id": "tiny:dino", "revision": None}}}
    with store.open_for_writing(config(metrics=dino), ENV):
        pass
    metrics = json.loads(store.run_json.read_text())["metrics"]
    assert set(metrics) == {"clip_t", "dino"} and metrics["clip_t"]["settings"] == {"pooling": "x"}


def test_replaced_rows_keep_the_last_version_and_compact_to_one_line(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row(case="a"))
        writer.append(row(case="b"))
        writer.replace(row(case="a", value=2.0))
    # killed before compaction: two lines for "a", readers keep the last
    assert len(store.samples_jsonl.read_text().splitlines()) == 3
    assert {r.case_id: r.metrics["clip_t"]["value"] for r in store.rows()} == {"a": 2.0, "b": 1.0}
    with store.open_for_writing(config(), ENV) as writer:
        writer.compact()
    lines = [json.loads(line) for line in store.samples_jsonl.read_text().splitlines()]
    assert [(r["case_id"], r["metrics"]["clip_t"]["value"]) for r in lines] == [("a", 2.0), ("b", 1.0)]


def test_methods_may_be_added_but_not_changed(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row())
    added = config(methods={"m2": {"settings_hash": "h2", "settings": {}}})
    with store.open_for_writing(added, ENV):
        pass
    assert set(json.loads(store.run_json.read_text())["methods"]) == {"m1", "m2"}
    changed = config(methods={"m1": {"settings_hash": "other", "settings": {}}})
    with pytest.raises(RelbenchError, match="method 'm1' was run here with other settings"):
        store.open_for_writing(changed, ENV)


def test_reference_files_may_be_added_but_not_changed(tmp_path: Path) -> None:
    def inputs(**digests: str) -> dict[str, Any]:
        return {"inputs": {f"{name}.png": {"path": f"/data/{name}.png", "sha256": sha * 64} for name, sha in digests.items()}}

    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(**inputs(a="1")), ENV) as writer:
        writer.append(row())
    with store.open_for_writing(config(**inputs(a="1", b="2")), ENV):  # a file not recorded yet joins
        pass
    assert json.loads(store.run_json.read_text())["inputs"] == inputs(a="1", b="2")["inputs"]
    with pytest.raises(RelbenchError) as info:
        store.open_for_writing(config(**inputs(a="1", b="3")), ENV)
    assert str(info.value) == (
        f"/data/b.png: reference file 'b.png' changed since the run in {tmp_path / 'run'} read it (sha256 222222222222... now "
        "333333333333...); its stored images and scores used the old file: put the old file back or use a new --output directory"
    )


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV):
        with pytest.raises(RelbenchError, match="another relbench process is writing"):
            RunStore(tmp_path / "run").open_for_writing(config(), ENV)
    with store.open_for_writing(config(), ENV):  # released on exit
        pass


def test_non_run_directories_are_refused(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(RelbenchError, match="non-empty directory that is not a relbench run"):
        RunStore(tmp_path / "busy").open_for_writing(config(), ENV)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RelbenchError, match="exists and is not a directory"):
        RunStore(tmp_path / "file").open_for_writing(config(), ENV)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{")
    with pytest.raises(RelbenchError, match="run.json: not valid JSON"):
        RunStore(tmp_path / "bad").open_for_writing(config(), ENV)


# ------------------------------------------------------------------ settings stored once (schema 2)


def scored(case: str, settings: dict[str, Any], method_settings: dict[str, Any]) -> Row:
    return Row(method="m1", settings_hash="h1", case_id=case, seed=0, image=f"images/m1/{case}/0.png",
               metrics={"clip_t": {"value": 1.0, "details": {}, "settings": settings, "higher_is_better": True}},
               method_settings=method_settings)


def test_rows_refer_to_settings_run_json_holds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relbench import runstore

    store = RunStore(tmp_path / "run")
    clip, method = {"model": "tiny:clip", "resize": [32, 32]}, {"steps": 2}
    writes: list[dict[str, Any]] = []
    real_write = runstore.atomic_write_json
    monkeypatch.setattr(runstore, "atomic_write_json", lambda path, value: (writes.append(json.loads(json.dumps(value))), real_write(path, value)))
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(scored("a", clip, method))
        writer.append(scored("b", dict(clip), dict(method)))  # equal settings, other objects: the same entries
    # run.json: once at the start, once before the first row (its two new settings); none for the second
    assert len(writes) == 2 and "metric_settings" not in writes[0]
    run = json.loads(store.run_json.read_text())
    assert run["metric_settings"] == {settings_hash(clip): {"model": "tiny:clip", "resize": [32, 32]}}
    assert run["method_settings"] == {settings_hash(method): method}
    lines = [json.loads(line) for line in store.samples_jsonl.read_text().splitlines()]
    assert [line["metrics"]["clip_t"] for line in lines] == [
        {"value": 1.0, "details": {}, "settings_ref": settings_hash(clip), "higher_is_better": True}] * 2
    assert [line["method_settings_ref"] for line in lines] == [settings_hash(method)] * 2
    # readers get the settings back: the rows, and the raw records (read_rows)
    assert [r.metrics["clip_t"]["settings"] for r in store.rows()] == [run["metric_settings"][settings_hash(clip)]] * 2
    assert [r["method_settings"] for r in read_rows(store.samples_jsonl)] == [method, method]
    assert read_rows(store.samples_jsonl)[0]["metrics"]["clip_t"]["settings"] == run["metric_settings"][settings_hash(clip)]


def test_a_run_of_schema_1_rows_resumes_and_keeps_reading_them(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV):
        pass
    old = {**scored("a", {"pooling": "x"}, {"steps": 2}).to_json(), "schema": 1}  # settings inline, as relbench wrote them
    store.samples_jsonl.write_text(json.dumps(old) + "\n")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(scored("b", {"pooling": "x"}, {"steps": 2}))
    first, second = (json.loads(line) for line in store.samples_jsonl.read_text().splitlines())
    assert first == old and second["schema"] == 2 and "method_settings" not in second
    assert store.rows() == [scored("a", {"pooling": "x"}, {"steps": 2}), scored("b", {"pooling": "x"}, {"steps": 2})]


def test_shard_rows_hold_their_settings_inline_and_the_merge_refers_to_run_json(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.open_for_writing(config(), ENV).close()
    with store.open_shard(1) as shard:
        shard.append(scored("a", {"pooling": "x"}, {"steps": 2}))
    (line,) = store.shard_path(1).read_text().splitlines()
    assert json.loads(line)["metrics"]["clip_t"]["settings"] == {"pooling": "x"}  # a shard does not write run.json
    with store.open_for_writing(config(), ENV):  # the main process absorbs the shards
        pass
    (line,) = store.samples_jsonl.read_text().splitlines()
    assert json.loads(line)["metrics"]["clip_t"]["settings_ref"] == settings_hash({"pooling": "x"})
    assert store.rows() == [scored("a", {"pooling": "x"}, {"steps": 2})]


# ------------------------------------------------------------------ images


def test_images_are_saved_at_png_level_1_with_the_pixels_of_a_level_6_save(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from relbench.runstore import atomic_save_image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    atomic_save_image(noise, tmp_path / "a.png")
    six = io.BytesIO()
    noise.save(six, format="PNG", compress_level=6)
    stored = (tmp_path / "a.png").read_bytes()
    assert b"IDATx\x01" in stored and b"IDATx\x9c" in six.getvalue()  # zlib's level mark: fastest vs default
    with Image.open(tmp_path / "a.png") as fast, Image.open(six) as default:
        assert fast.mode == default.mode == "RGB" and fast.size == default.size == (48, 64)
        assert fast.tobytes() == default.tobytes() == noise.tobytes()


def test_a_failed_image_write_is_one_line_from_its_future_and_stops_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os
    import threading

    from PIL import Image

    from relbench import runstore

    real_save = runstore.atomic_save_image
    saved: list[str] = []
    queued = threading.Event()

    def save(image: Any, path: Path) -> None:
        queued.wait(10)  # the three images are queued before the first is written
        if path.name == "1.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(image, path)
        saved.append(path.name)

    monkeypatch.setattr(runstore, "atomic_save_image", save)
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    with runstore.ImageSaver(depth=3) as saver:
        futures = [saver.submit(image, tmp_path / f"{i}.png") for i in range(3)]
        queued.set()
        futures[2].exception()  # wait for the writer
        with pytest.raises(RelbenchError) as later:
            saver.submit(image, tmp_path / "3.png")
    assert futures[0].result() is None and saved == ["0.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png"]  # nothing after the failure, no temporary
    message = f"{tmp_path / '1.png'}: no space left on device; free space and run the same command again"
    for future in futures[1:]:
        with pytest.raises(RelbenchError) as failed:
            future.result()
        assert str(failed.value) == message
    assert str(later.value) == message
