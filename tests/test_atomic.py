"""relbench.atomic: files keep the user's umask (not mkstemp's 0600), and a failed write leaves the
old file and no temporary file behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relbench import atomic
from relbench.atomic import atomic_path, atomic_save_safetensors, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _write_with_path(path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")


def _write_safetensors(path: Path) -> None:
    import torch

    atomic_save_safetensors(path, {"x": torch.zeros(2)}, {"note": "n"})


WRITERS: dict[str, Callable[[Path], None]] = {
    "bytes": lambda path: atomic_write_bytes(path, b"new"),
    "text": lambda path: atomic_write_text(path, "new"),
    "path": _write_with_path,
    "safetensors": _write_safetensors,
}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_0666_less_the_umask(tmp_path: Path, umask, writer: str, mask: int, expected: int) -> None:
    umask(mask)
    path = tmp_path / "sub" / "file.bin"  # the folder is created too
    WRITERS[writer](path)
    assert _mode(path) == expected
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_a_replaced_file_takes_the_umask_mode_and_the_new_content(tmp_path: Path, umask) -> None:
    path = tmp_path / "run.json"
    path.write_text("old")
    path.chmod(0o600)  # e.g. written by an older relbench through mkstemp
    atomic_write_text(path, "new")
    assert (path.read_text(), _mode(path)) == ("new", 0o644)


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")  # the writer got part of the way
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_a_failed_byte_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b"old\n")

    def no_space(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"new\n")
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.jsonl"]


def test_a_taken_temporary_name_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.txt"
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda _n: next(names))
    (tmp_path / ".a.txt.aaaaaaaaaaaa.tmp").write_text("another writer's")
    atomic_write_text(path, "mine")
    assert path.read_text() == "mine"
    assert (tmp_path / ".a.txt.aaaaaaaaaaaa.tmp").read_text() == "another writer's"  # left alone


def test_safetensors_carry_format_and_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "w.safetensors"
    assert atomic_save_safetensors(path, {"x": __import__("torch").ones(3)}, {"note": "n"}) == path
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "n"}
        assert handle.get_tensor("x").tolist() == [1.0, 1.0, 1.0]


def test_the_files_relbench_writes_are_readable_by_the_group_and_others(tmp_path: Path, umask) -> None:
    """Runs, caches and weights go through relbench.atomic: 0644 under umask 022 (mkstemp gave 0600)."""
    import torch

    from relbench.methods.reversion.embeds import save_learned_embeds
    from relbench.metrics.embedding_cache import EmbeddingStore
    from relbench.metrics.relation_judge.cache import JudgeCache
    from relbench.runstore import atomic_write_json
    from relbench.tiny import clip_bpe_files

    atomic_write_json(tmp_path / "run" / "run.json", {"schema": 1})
    JudgeCache(tmp_path / "judge").put({"question": "q"}, {"yes": 0.5})
    EmbeddingStore(tmp_path / "emb", {"model": "m"}, 2).put("ab" * 20, torch.zeros(2))
    save_learned_embeds(torch.zeros(4), "<R>", tmp_path / "embeds")
    clip_bpe_files(tmp_path / "bpe")
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 7  # run.json, a judge answer, settings.json + a vector, the embedding, vocab + merges
    assert {p.relative_to(tmp_path).as_posix(): _mode(p) for p in written} == {p.relative_to(tmp_path).as_posix(): 0o644 for p in written}
    assert not any(p.name.startswith(".") for p in written)  # no temporary file left
