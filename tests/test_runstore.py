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
        ({"cases": ["a"]}, "cases:"),
        ({"resolution": [128, 128]}, "resolution"),
    ],
)
def test_reusing_an_output_with_other_settings_is_refused(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    store = RunStore(tmp_path / "run")
    with store.open_for_writing(config(), ENV) as writer:
        writer.append(row())  # settings bind the directory once a row made with them is stored
    with pytest.raises(RelbenchError) as info:
        store.open_for_writing(config(**changes), ENV)
    assert message in str(info.value) and "use a new --output directory" in str(info.value)


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
