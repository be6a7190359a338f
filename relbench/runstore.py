"""The run store: one output directory per evaluation, safe to kill and resume.

Layout of ``<output>/``::

    run.json        what the run computes (benchmark, profile, seeds, resolution, cases, metrics with
                    their models, methods with their settings and its hash), and what produced it
                    (package versions, git commit, machine, times; see CONFIG_KEYS), and the
                    settings the rows refer to (``metric_settings``, ``method_settings``:
                    settings by digest, ``relbench.rows.SettingsTable``)
    samples.jsonl   one JSON row per (method, case, seed): prompt, seed, image path, every metric
                    value with a reference to the settings that produced it, the method's settings
                    hash and a reference to its resolved settings (the format's owner:
                    ``relbench.rows.Row``)
    images/<method>/<case_id>/<seed>.png
    samples.rejected.jsonl  lines of samples.jsonl that were not valid rows, moved aside (if any)
    .lock           held while a process writes here

Guarantees:

* every file is written atomically (temporary file + ``os.replace``); ``samples.jsonl`` is only
  appended to, one flushed and fsync'ed line per row, and a line cut short by a kill is removed
  when the store is opened again;
* a row is appended only after its image is on disk, and only if no row has that key; new scores
  for a stored image append a new version of its row (readers keep the last) and the file is
  compacted to one line per key when the run ends, so a run killed at any moment and started again
  ends with exactly one row per key;
* images are written by one background thread (``ImageSaver``: PNG at compression level 1, which
  is lossless like any level, so the pixels are those of the default level 6 in a fraction of the
  time) while the next batch is generated and scored; a row is appended once its image's future
  says it is written. Each image is one atomic write with one fsync of its file; the folder is
  not fsync'ed, so after a power loss a renamed image may be missing while its row (fsync'ed
  later) is there: every start that generates checks each row's image and makes it again;
* a row refers to its settings (``settings_ref``, ``method_settings_ref``) and run.json holds them
  (``metric_settings``, ``method_settings``): the writer stores a new entry in run.json before
  the first row that refers to it, so a row never names settings run.json lacks. Shard files of a
  multi-process run hold their settings inline (only the main process writes run.json);
* a complete line that is not a valid row (``{}``, a missing field, an image path outside the
  run directory) is moved to ``samples.rejected.jsonl`` by the writer, with a warning, and its
  item is made again; readers (reports) refuse it, naming the file, line and field;
* an output directory whose stored rows were made with other settings is refused, naming the
  setting that differs. New methods and metrics may be added to an existing run; a method with a
  stored row must keep its settings hash, a metric with a stored value its model. Settings with
  nothing stored bind nothing: a start that failed before its first row does not block the
  corrected command (images it left without a row are removed);
* a full disk or an output folder that cannot be written ends in one error line naming the file
  (``relbench.errors.output_errors``); what was half-written is repaired by the next start;
* the reference files the cases read are part of the run: run.json's ``inputs`` holds their sha256
  (``relbench.input_files``) and a resume that finds one with other bytes is refused, naming the
  file. A run.json without ``inputs`` (an older relbench) gets them on its next resume, with a
  warning: changes made before that resume cannot be detected.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relbench.atomic import atomic_write_bytes as atomic_write_bytes  # the one atomic writer (umask-respecting)
from relbench.atomic import is_temporary, remove_temporaries
from relbench.errors import RelbenchError, output_errors
from relbench.hashing import settings_hash as settings_hash  # the runner hashes each method's settings
from relbench.rows import READABLE_SCHEMAS, ROW_SCHEMA_VERSION, Row, RowKey, SettingsTable, resolve_settings
from relbench.rows import row_key as row_key  # for readers of raw records (cli)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from PIL import Image

# A method name that is one plain folder name (run.json is read from the user's folder: a name
# like "../x" must never lead a deletion outside the run).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The version of run.json's format (a row's is relbench.rows.ROW_SCHEMA_VERSION).
RUN_SCHEMA_VERSION = 1


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode("utf-8"))


# zlib level of the PNGs relbench writes. Every level is lossless (the same pixels); at 1024 px
# level 1 encoded a photo 4.8x and uniform noise 1.8x faster than Pillow's default 6, the photo's
# file 13% larger (bench/RESULTS.md, issue 13). Not part of any identity: only the pixels are.
PNG_COMPRESS_LEVEL = 1


def atomic_save_image(image: "Image.Image", path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    atomic_write_bytes(path, buffer.getvalue())


def _split_lines(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """``(line number, bytes)`` of each complete, non-blank line, and the bytes after the last
    newline (a row cut short by a kill: each row is written as one ``line + "\n"``)."""
    complete, newline, tail = data.rpartition(b"\n")
    if not newline:
        complete, tail = b"", data
    lines = complete.split(b"\n") if complete else []
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()], tail


def _parse_line(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise RelbenchError(f"{path}: line {number}: not a valid JSON row ({exc}); the file was edited or damaged") from None
    if not isinstance(row, dict):
        raise RelbenchError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
    return row


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many rows are read. Parsing a samples file
    makes millions of small dicts and lists, none in a reference cycle, and each batch of new ones
    makes the collector walk the growing heap again for nothing: 10k schema-1 rows read 1.8x
    faster without it (bench/RESULTS.md, issue 13). Restored after, if it was on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_numbered_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], bytes]:
    """``(line number, row)`` for each row of a samples.jsonl, and the bytes of a cut-short row.

    Each row is written as one ``line + "\n"``, so a kill can only leave bytes after the last
    newline: those are returned apart (the row will be made again). Any complete line that is not
    a JSON object means the file was damaged otherwise: an error naming the file and line.
    """
    if not path.is_file():
        return [], b""
    lines, tail = _split_lines(path.read_bytes())
    return [(number, _parse_line(path, number, line)) for number, line in lines], tail


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a samples.jsonl as stored, without a cut-short last row, each with its
    settings references resolved by the run.json beside it (``relbench.rows.resolve_settings``: a
    metric result holds ``settings``, the row ``method_settings``, as in a schema-1 row; a reference
    run.json lacks is left as it is)."""
    with collector_paused():
        rows, _ = read_numbered_rows(path)
        settings = run_settings(path.parent)  # after the rows: the writer adds settings before the rows naming them
        return [resolve_settings(row, settings) for _, row in rows]


def run_settings(root: Path) -> SettingsTable:
    """The settings table of the run.json in ``root`` (empty when there is none)."""
    return SettingsTable.from_run(RunStore(root).read_run(), str(RunStore(root).run_json))


# Where the writer moves the complete lines of a samples file that are not valid rows.
REJECTED_FILE = "samples.rejected.jsonl"


def load_rows(path: Path, *, repair: bool = False, settings: SettingsTable | None = None) -> list[Row]:
    """The ``Row``s of a samples file, their settings references resolved by ``settings`` (None: the
    run.json beside the file, read after the rows, since the writer stores settings there before
    the rows that name them). Reading (``repair`` False): a malformed row is an error naming the
    file, line and field. The writer (``repair``, under the run's lock) repairs instead: a
    cut-short last row is cut off (a kill), and each complete line that is not a valid row (not
    JSON, ``{}``, a missing or bad field, an image outside the run directory, settings run.json
    lacks) is moved to ``samples.rejected.jsonl`` beside it with one warning, so that its item is
    made again. A row of a newer schema is refused (it is not damage: a newer relbench wrote it)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines, tail = _split_lines(data)
    if settings is None:
        settings = run_settings(path.parent)
    rows: list[Row] = []
    kept: list[bytes] = []
    rejected: list[tuple[bytes, str]] = []
    with collector_paused():  # many small objects, no cycles
        for number, line in lines:
            where = f"{path}: line {number}"
            try:
                record = _parse_line(path, number, line)
                schema = record.get("schema", ROW_SCHEMA_VERSION)
                if repair and isinstance(schema, int) and not isinstance(schema, bool) and schema > ROW_SCHEMA_VERSION:
                    raise _NewerRow(f"{where}: schema: expected {' or '.join(map(str, READABLE_SCHEMAS))}, got {schema}: "
                                    "written by a newer relbench; upgrade relbench to resume this run")
                rows.append(Row.from_json(record, where, settings))
                kept.append(line)
            except _NewerRow:
                raise
            except RelbenchError as exc:
                if not repair:
                    raise
                rejected.append((line, str(exc)))
    if repair and (rejected or tail):
        if rejected:
            aside = path.with_name(REJECTED_FILE)
            with open(aside, "ab") as handle:
                handle.write(b"".join(line + b"\n" for line, _ in rejected))
                handle.flush()
                os.fsync(handle.fileno())
            more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            warnings.warn(f"{rejected[0][1]}{more}: moved {len(rejected)} damaged line(s) to {aside}; "
                          "a run that generates makes their items again", stacklevel=2)
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    return rows


class _NewerRow(RelbenchError):
    """A row of a newer schema: refused, never moved aside."""


@dataclass
class RunStore:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def samples_jsonl(self) -> Path:
        return self.root / "samples.jsonl"

    def image_relpath(self, method: str, case_id: str, seed: int) -> str:
        return f"images/{method}/{case_id}/{seed}.png"

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_json.is_file():
            return None
        try:
            value = json.loads(self.run_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RelbenchError(f"{self.run_json}: not valid JSON ({exc})") from None
        if not isinstance(value, dict) or not all(key in value for key in CONFIG_KEYS):
            raise RelbenchError(f"{self.run_json}: not a relbench run file (expected keys {', '.join(CONFIG_KEYS)})")
        return value

    def rows(self) -> list[Row]:
        """One row per key: the last version of each (a replaced row's scores are newer)."""
        return list({r.key: r for r in load_rows(self.samples_jsonl)}.values())

    def open_for_writing(self, config: dict[str, Any], environment: dict[str, Any]) -> "RunWriter":
        """Lock the directory, repair the samples file, refuse settings that differ from those of
        the stored rows, write run.json. A full disk or a folder that cannot be written is one
        error line (``relbench.errors.output_errors``)."""
        from filelock import FileLock, Timeout

        if self.root.exists() and not self.root.is_dir():
            raise RelbenchError(f"{self.root}: --output exists and is not a directory")
        if self.root.is_dir() and not self.run_json.exists() and any(not _start_leftover(p.name) for p in self.root.iterdir()):
            raise RelbenchError(f"{self.root}: --output is a non-empty directory that is not a relbench run; choose a new one")
        with output_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.root / ".lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise RelbenchError(f"{self.root}: another relbench process is writing to this run directory") from None
        try:
            # A killed run can leave an atomic writer's temporary (an image half saved): under the
            # lock no process of this run is writing, so every one left is garbage.
            with output_errors(self.root):
                remove_temporaries(self.root)
            existing = self.read_run()
            settings = SettingsTable.from_run(existing, str(self.run_json))
            with output_errors(self.samples_jsonl):
                rows = load_rows(self.samples_jsonl, repair=True, settings=settings)
                stored = [*rows, *(r for shard in self.shard_paths() for r in load_rows(shard, repair=True, settings=settings))]
            merged = merge_config(identity(existing), config, self.root, stored) if existing else config
            # Images a forgotten start left without a row were made with the settings it forgot:
            # removed before run.json names the new settings, so that none is reused.
            for method in _forgotten_images(identity(existing), merged) if existing else ():
                folder = self.root / "images" / method
                if _SAFE_NAME.fullmatch(method) and folder.is_dir() and not folder.is_symlink():
                    with output_errors(folder):
                        shutil.rmtree(folder)
            run: dict[str, Any] = {"schema": RUN_SCHEMA_VERSION}
            run.update({k: v for k, v in (existing or {}).items() if k != "schema"})
            run.setdefault("created", environment.get("time"))
            for key, value in merged.items():
                if key == "metrics":  # keep what a finished run recorded about each metric
                    old = (existing or {}).get("metrics", {})
                    value = {name: {**old.get(name, {}), **entry} if old.get(name, {}).get("model") == entry.get("model") else entry
                             for name, entry in value.items()}
                run[key] = value
            run["relbench_version"] = environment.get("relbench_version")
            run["git_commit"] = environment.get("git_commit")
            run["packages"] = environment.get("packages")
            run["environment"] = {k: v for k, v in environment.items() if k not in ("packages", "relbench_version", "git_commit")}
            with output_errors(self.run_json):
                atomic_write_json(self.run_json, run)
            with output_errors(self.samples_jsonl):
                writer = RunWriter(self, lock, {r.key: r for r in rows}, len(rows), settings=settings)
        except BaseException:
            lock.release()
            raise
        writer.absorb_shards()  # rows a killed multi-process run left in its shard files
        return writer

    # ---------------------------------------------------------------- multi-process runs
    # Each process of a distributed run (accelerate launch / torchrun) appends only its own items
    # to ``samples.rank-<k>.jsonl`` under its own lock; the main process merges the shards into
    # samples.jsonl (each key is handled by one process, so nothing conflicts) and deletes them.

    def shard_path(self, rank: int) -> Path:
        return self.root / f"samples.rank-{rank}.jsonl"

    def shard_paths(self) -> list[Path]:
        return sorted(self.root.glob("samples.rank-*.jsonl"))

    def open_shard(self, rank: int) -> "RunWriter":
        """A writer for process ``rank``: knows every merged row, appends to its own shard file."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / f".lock.rank-{rank}"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RelbenchError(f"{self.root}: another relbench process is writing shard {rank} of this run") from None
        try:
            settings = run_settings(self.root)  # the main process wrote run.json before the shards open
            merged = {r.key: r for r in load_rows(self.samples_jsonl, settings=settings)}
            with output_errors(self.shard_path(rank)):
                own = load_rows(self.shard_path(rank), repair=True, settings=settings)
                merged.update((r.key, r) for r in own)
                return RunWriter(self, lock, merged, len(merged), path=self.shard_path(rank))
        except BaseException:
            lock.release()
            raise


# Keys of run.json that identify what a run computes; resuming with any other value is refused.
CONFIG_KEYS = ("benchmark", "profile", "seeds", "resolution", "cases", "metrics", "methods")


def identity(run: dict[str, Any]) -> dict[str, Any]:
    """The part of run.json that a resumed command must match (metrics: names and models only;
    inputs: the reference files' sha256, None in a run.json written before they were recorded)."""
    config = {key: run.get(key) for key in CONFIG_KEYS}
    config["metrics"] = {name: {"model": entry.get("model")} for name, entry in (run.get("metrics") or {}).items()}
    config["inputs"] = run.get("inputs")
    return config


def merge_config(old: dict[str, Any], new: dict[str, Any], root: Path, stored: Sequence[Row]) -> dict[str, Any]:
    """The config of a resumed run whose samples file holds the rows ``stored``.

    Settings bind the directory once results made with them are stored. Benchmark, profile, seeds,
    resolution and the reference files' sha256 (``inputs``; files not recorded yet are added)
    must match once any row is stored; the cases may be a subset of the run's (``--relations hug``:
    one more method evaluated on some of the cases joins the run, which keeps its case list; the
    reports show each method's coverage). Methods and metrics may be added (a new method joins
    the run; a new metric scores the stored images), but a method with a stored row must keep its
    settings hash, and a metric with a stored value its model. Until then they may change: a start
    that failed before storing anything (``--set sdxl.dtype=int8`` refused by the model) does not
    block the corrected command.
    """
    from relbench.input_files import changed_inputs, changed_message

    cases = new.get("cases")
    if stored:
        for key in sorted(set(old) | set(new)):
            if key in ("methods", "metrics", "inputs"):
                continue
            if key == "cases" and _is_subset(new.get(key), old.get(key)):
                cases = old.get(key)  # a command on some of the run's cases adds to the run
                continue
            if old.get(key) != new.get(key):
                raise RelbenchError(
                    f"{root}: this run was made with different settings ({key}: {_short(old.get(key))} != "
                    f"{_short(new.get(key))}); {_same_benchmark_hint(old, new) if key == 'benchmark' else ''}"
                    f"{_cases_hint(old, new) if key == 'cases' else ''}use a new --output directory"
                )
    with_rows = {row.method for row in stored}
    with_values = {name for row in stored for name in row.metrics}
    methods = dict(old.get("methods") or {})
    for name, entry in (new.get("methods") or {}).items():
        if name in with_rows and name in methods and methods[name]["settings_hash"] != entry["settings_hash"]:
            raise RelbenchError(
                f"{root}: method {name!r} was run here with other settings (hash {methods[name]['settings_hash']} "
                f"!= {entry['settings_hash']}); use a new --output directory"
            )
        methods[name] = entry
    metrics = dict(old.get("metrics") or {})
    for name, entry in (new.get("metrics") or {}).items():
        if name in with_values and name in metrics and metrics[name].get("model") != entry.get("model"):
            raise RelbenchError(
                f"{root}: metric {name!r} was computed here with another model ({_short(metrics[name].get('model'))} != "
                f"{_short(entry.get('model'))}); use a new --output directory"
            )
        metrics[name] = entry
    recorded, current = old.get("inputs"), new.get("inputs") or {}
    changed = changed_inputs(recorded, current)
    if changed and stored:
        raise RelbenchError(changed_message(changed[0], recorded or {}, current, root))
    if recorded is None and current and stored:
        warnings.warn(f"{root}: run.json records no sha256 of the reference files (written by an older relbench); "
                      "recording them now: a file replaced before this resume cannot be detected", stacklevel=2)
    return {**new, "cases": cases, "methods": methods, "metrics": metrics, "inputs": {**(recorded or {}), **current}}


def _is_subset(cases: Any, of: Any) -> bool:
    return isinstance(cases, list) and isinstance(of, list) and set(cases) <= set(of)


def _cases_hint(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which cases a command adds to a run (a subset of the run's cases may be added to it)."""
    extra = [case for case in new.get("cases") or [] if case not in set(old.get("cases") or [])]
    if not extra:
        return ""
    more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
    return f"case {extra[0]!r}{more} not in this run (a command may select some of the run's cases, not others), or "


def _start_leftover(name: str) -> bool:
    """A file a start that failed before writing run.json (a full disk, a kill) may leave: the lock
    file or an atomic writer's temporary; a folder holding only these is still a new run."""
    return name == ".lock" or name.startswith(".lock.rank-") or is_temporary(name)


def _forgotten_images(old: dict[str, Any], merged: dict[str, Any]) -> list[str]:
    """Methods whose images folder holds only images of settings ``merged`` no longer has (a
    method's settings hash changed, or the benchmark or a reference file did; ``merge_config``
    allows that only where no row was stored, so those images have no row)."""
    from relbench.input_files import changed_inputs

    old_methods = old.get("methods") or {}
    if old.get("benchmark") != merged.get("benchmark") or changed_inputs(old.get("inputs"), merged.get("inputs") or {}):
        return sorted(old_methods)
    return sorted(name for name, entry in old_methods.items()
                  if (merged.get("methods") or {}).get(name, entry)["settings_hash"] != entry["settings_hash"])


def _same_benchmark_hint(old: dict[str, Any], new: dict[str, Any]) -> str:
    """When only the version differs (``-b relationbench`` now means a newer version than the run's),
    the command that resumes the run."""
    was, now = old.get("benchmark") or {}, new.get("benchmark") or {}
    if was.get("name") and was.get("name") == now.get("name") and was.get("version") != now.get("version"):
        return f"to resume it pass -b {was['name']}@{was['version']}, or "
    return ""


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class RunWriter:
    """Appends rows and saves images while holding the run directory's lock.

    A row is replaced (new scores for a stored image) by appending the new version: readers keep
    the last line of a key. ``compact`` rewrites the file with one line per key at the end of a
    run, so a finished run has exactly one row per (method, settings hash, case, seed).

    ``settings``: the run's settings table (run.json ``metric_settings``/``method_settings``); rows
    are written with references into it, and settings it did not hold yet are stored in run.json
    before the row. None: a shard writer, whose rows hold their settings inline.
    """

    def __init__(self, store: RunStore, lock: Any, rows: dict[RowKey, Row], lines: int, path: Path | None = None,
                 settings: SettingsTable | None = None):
        self.store = store
        self._lock = lock
        self.rows = rows
        self.path = path or store.samples_jsonl  # a shard file for the processes of a distributed run
        self._lines = lines  # rows in the file, replaced versions included
        self.settings = settings
        self._settings_stored = len(settings) if settings is not None else 0  # entries run.json holds
        self._handle = open(self.path, "ab")

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if not self._handle.closed:
                self._handle.close()
        except OSError:
            pass  # a row a full disk cut short: the next open cuts it off (load_rows' repair)
        finally:
            self._lock.release()

    def has(self, key: RowKey) -> bool:
        return key in self.rows

    def image_path(self, method: str, case_id: str, seed: int) -> Path:
        return self.store.root / self.store.image_relpath(method, case_id, seed)

    def append(self, row: Row) -> None:
        """Add a new row; a key that already has a row is left as it is."""
        if row.key not in self.rows:
            self._write(row)

    def replace(self, row: Row) -> None:
        """Store a new version of a row (same key)."""
        self._write(row)

    def _write(self, row: Row) -> None:
        line = self._encode([row])
        with output_errors(self.path):
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        self.rows[row.key] = row
        self._lines += 1

    @property
    def is_shard(self) -> bool:
        return self.path != self.store.samples_jsonl

    def absorb_shards(self) -> int:
        """Main writer: take every shard file's rows (they win over older versions), delete the
        shards, compact. Returns the number of rows taken."""
        if self.is_shard:
            raise RuntimeError("a shard writer cannot merge shards")
        taken = 0
        shards = self.store.shard_paths()
        for shard in shards:
            with output_errors(shard):
                shard_rows = load_rows(shard, repair=True)
            for row in shard_rows:
                self.replace(row)
                taken += 1
        if shards:
            self.compact()
            for shard in shards:
                shard.unlink()
        return taken

    def compact(self) -> None:
        """Rewrite samples.jsonl with the last version of each row only (atomic)."""
        if self.is_shard or self._lines == len(self.rows):
            return
        data = self._encode(self.rows.values())
        self._handle.close()
        with output_errors(self.store.samples_jsonl):
            atomic_write_bytes(self.store.samples_jsonl, data)
            self._handle = open(self.store.samples_jsonl, "ab")
        self._lines = len(self.rows)

    def iter_rows(self) -> Iterator[Row]:
        return iter(list(self.rows.values()))

    def _encode(self, rows: Iterable[Row]) -> bytes:
        """The samples-file lines of ``rows`` (``default=str``: a metric detail JSON cannot hold).
        Settings they refer to that run.json does not hold yet are stored there first."""
        data = b"".join(json.dumps(row.to_json(self.settings), default=str).encode("utf-8") + b"\n" for row in rows)
        if self.settings is not None and len(self.settings) != self._settings_stored:
            run = self.store.read_run() or {}
            run.update(self.settings.to_run())
            with output_errors(self.store.run_json):
                atomic_write_json(self.store.run_json, run)
            self._settings_stored = len(self.settings)
        return data


# Images queued for the writer thread, the one being written included: generation waits when it
# is this far ahead (4 RGB images of 1024 px hold 12 MB).
IMAGE_QUEUE = 4


class ImageSaver:
    """Writes a run's images on one background thread, so that PNG encoding and fsync overlap the
    generation and scoring of the next batch (zlib and fsync release the GIL).

    ``submit`` returns a future that is done once the image is written (``atomic_save_image``: a
    temporary file, fsync'ed, renamed); the caller appends the image's row only then, so a row
    never names an image that is not on disk. A failed write (a full disk: one error line naming
    the image, ``output_errors``) is raised by its future's ``result()`` and by every later
    ``submit``; images queued after it are not written. Leaving the block waits for the images
    already queued, also when the caller raised (Ctrl-C): each is whole or absent (atomic), and a
    resume reuses those without a row.
    """

    def __init__(self, depth: int = IMAGE_QUEUE):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relbench-images")
        self._slots = threading.Semaphore(depth)
        self._failure: BaseException | None = None

    def __enter__(self) -> "ImageSaver":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def submit(self, image: "Image.Image", path: Path) -> "Future[None]":
        if self._failure is not None:
            raise self._failure
        self._slots.acquire()
        try:
            # A copy: saving sets attributes on the image (Image.save), which the caller is scoring.
            future = self._pool.submit(self._save, image.copy(), path)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def _save(self, image: "Image.Image", path: Path) -> None:
        if self._failure is not None:
            raise self._failure  # an earlier image failed: the command is ending
        try:
            with output_errors(path):
                atomic_save_image(image, path)
        except BaseException as exc:
            self._failure = exc
            raise


# The first and last bytes of every PNG file: the signature, and the IEND chunk (length 0, type,
# CRC) that ends it.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def image_looks_whole(path: Path) -> bool:
    """Whether a stored image is there and whole as far as its first and last bytes tell: a PNG
    signature and the IEND chunk at the end (a missing, empty or truncated file fails; a file
    damaged in its middle is found when it is decoded). Every row is checked on every start that
    generates: 3,600 rows of 1024 px images take 0.18 s with the files in the page cache, 2.3 s
    from a cold disk (a plain stat: 0.03 s)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
                return False
            handle.seek(0, os.SEEK_END)
            if handle.tell() < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            handle.seek(-len(_PNG_END), os.SEEK_END)
            return handle.read() == _PNG_END
    except OSError:  # missing, a folder, unreadable
        return False
