"""Reading benchmark spec files (YAML or JSON) and checking them and the files they name.

Every problem is reported as ``<file>: <field>: <problem>`` (``relbench.errors.Problem``), all of
them at once rather than the first only, so that a spec author can fix a file in one pass.

Spec layout (see ``benchmark_data/demo/benchmark.yaml`` for a complete example)::

    name: demo
    version: "1"
    description: ...
    subjects:  [{id, class_noun, category, images: [ref, ...], masks: [ref, ...]?}]
    relations: [{id, phrase, kind, fits: [[category, ...], ...], reference_poses: [...]?}]
    cases:     [{id, subjects: [id, ...], relation, prompt, boxes: [[x0, y0, x1, y1], ...]}]

Ids (and the name) become file and folder names (``images/<method>/<case>/``, per-subject and
per-relation weights), so they must be safe as names on Linux, macOS and Windows: at most
``MAX_ID_CHARS`` characters of lowercase letters, digits, '_', '.', '-', starting with a letter or
digit, not ending with '.', and not a name Windows reserves (``con``, ``nul``, ``com1``, ...).

A spec file is untrusted input: YAML anchors and aliases are refused (a few hundred bytes of them
expand to gigabytes), and so is nesting deeper than ``MAX_NESTING`` lists or mappings.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from relbench.benchmark import Benchmark, Case, ReferencePose, Relation, RelationKind, Subject
from relbench.data_root import is_bundled, open_image, resolve_path
from relbench.errors import Problem, RelbenchError, SpecError
from relbench.keypoints import SKELETONS, KeypointFileError, load_pose

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# Ids name files and folders; 100 keeps <output>/images/<method>/<case>/<seed>.png far from the
# 255-byte name and 260-character Windows path limits.
MAX_ID_CHARS = 100
# Device names Windows reserves, also with any extension ("nul.png"): such a file cannot be made.
WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{port}{n}" for port in ("com", "lpt") for n in range(10)}
)
# Lists and mappings inside one another; a spec needs 6, a sweep file about as many.
MAX_NESTING = 32


def read_spec_file(path: Path) -> Any:
    """Parse YAML or JSON by extension; a parse failure is a one-line error naming the file."""
    if not path.is_file():
        raise RelbenchError(f"{path}: spec file not found")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise RelbenchError(f"{path}: unsupported spec format; expected .yaml, .yml or .json")
    import yaml

    too_deep = f"nested more than {MAX_NESTING} levels of lists or mappings deep"
    try:
        text = path.read_text(encoding="utf-8")
        if suffix != ".json":
            return _load_yaml(text)
        try:
            data = json.loads(text)
        except RecursionError:  # the decoder recurses once per level: thousands of '[' end here
            raise RelbenchError(f"{path}: {too_deep}") from None
        if _nesting(data) > MAX_NESTING:
            raise RelbenchError(f"{path}: {too_deep}")
        return data
    except _Refused as exc:
        message = too_deep if exc.too_deep else exc.message
        raise RelbenchError(f"{path}: line {exc.mark.line + 1}: {message}") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        first_line = " ".join(str(exc).split()) or type(exc).__name__
        raise RelbenchError(f"{path}: not valid {suffix[1:].upper()}: {first_line}") from exc


class _Refused(Exception):
    """A YAML construct that specs do not allow, at ``mark`` (the parser knows no file name)."""

    def __init__(self, mark: Any, message: str = "", too_deep: bool = False):
        super().__init__(message)
        self.mark, self.message, self.too_deep = mark, message, too_deep


def _load_yaml(text: str) -> Any:
    """yaml.safe_load without anchors and aliases, and with a depth limit.

    Aliases let a 1 KB file describe gigabytes (each level of "*a, *a, ..." multiplies the last),
    and PyYAML's composer recurses once per level; so the event stream (flat, cheap) is checked
    first, and only a spec that passes is built. libyaml parses when installed: it is about ten
    times faster than the pure-Python parser on large specs.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _Refused(event.start_mark, "YAML anchors and aliases (&name, *name) are not allowed in a spec; "
                                                 "write each value out")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_NESTING:
                    raise _Refused(event.start_mark, too_deep=True)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml's scanner reads flow collections ahead and stops at its own limit (1000 levels)
        # before we see the events: the same refusal, in the same words.
        if "nesting depth" in (exc.problem or "") and exc.problem_mark is not None:
            raise _Refused(exc.problem_mark, too_deep=True) from None
        raise
    return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)


def _nesting(data: Any) -> int:
    """How many lists or mappings deep ``data`` goes (iterative: no recursion limit to hit)."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                break
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id (it names files and folders), or None when it can."""
    if len(value) > MAX_ID_CHARS:
        return f"expected at most {MAX_ID_CHARS} characters (it names files), got {len(value)}"
    if not ID_PATTERN.match(value):
        return "expected lowercase letters, digits, '_', '.', '-', starting with a letter or digit"
    if value.endswith("."):
        return "must not end with '.' (Windows drops it from file names)"
    if value.split(".", 1)[0] in WINDOWS_RESERVED:
        return f"{value.split('.', 1)[0]!r} is a device name Windows reserves; it cannot name a file"
    return None


class _Checker:
    """Collects problems while converting a parsed spec into data-model objects."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, field, message))

    def string(self, obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.add(f"{where}.{key}" if where else key, "missing; expected a non-empty string")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "version":
            return str(value)
        if not isinstance(value, str) or not value.strip():
            self.add(f"{where}.{key}" if where else key, f"expected a non-empty string, got {value!r}")
            return None
        return value

    def identifier(self, obj: dict[str, Any], where: str) -> str | None:
        value = self.string(obj, "id", where)
        problem = id_problem(value) if value is not None else None
        if problem:
            self.add(f"{where}.id", f"{value!r} is not a valid id: {problem}")
            return None
        return value

    def string_list(self, obj: dict[str, Any], key: str, where: str, *, required: bool) -> list[str]:
        value = obj.get(key)
        if value is None:
            if required:
                self.add(f"{where}.{key}", "missing; expected a non-empty list of strings")
            return []
        if not isinstance(value, list) or (required and not value):
            self.add(f"{where}.{key}", f"expected a {'non-empty ' if required else ''}list of strings, got {value!r}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.add(f"{where}.{key}[{i}]", f"expected a non-empty string, got {item!r}")
            else:
                out.append(item)
        return out

    def mappings(self, spec: dict[str, Any], key: str, *, required: bool) -> list[tuple[str, dict[str, Any]]]:
        value = spec.get(key)
        if value is None:
            if required:
                self.add(key, "missing; expected a non-empty list")
            return []
        if not isinstance(value, list) or (required and not value):
            self.add(key, f"expected a {'non-empty ' if required else ''}list, got {type(value).__name__}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.add(f"{key}[{i}]", f"expected a mapping, got {item!r}")
                continue
            label = item.get("id") if isinstance(item.get("id"), str) else i
            out.append((f"{key}[{label}]", item))
        return out


def parse_spec(data: Any, file: str, spec_path: Path | None = None) -> tuple[Benchmark | None, list[Problem]]:
    """Convert parsed spec data to a Benchmark; the Benchmark is None when any problem was found."""
    check = _Checker(file)
    if not isinstance(data, dict):
        check.add("(top level)", f"expected a mapping with name, version, subjects, relations, cases; got {type(data).__name__}")
        return None, check.problems

    name = check.string(data, "name", "")
    name_problem = id_problem(name) if name is not None else None
    if name_problem:
        check.add("name", f"{name!r} is not a valid name: {name_problem}")
    version = check.string(data, "version", "")
    description = data.get("description") or ""
    if not isinstance(description, str):
        check.add("description", f"expected a string, got {description!r}")
        description = ""

    subjects = _parse_subjects(check, data)
    relations = _parse_relations(check, data)
    cases = _parse_cases(check, data, subjects, relations)

    if check.problems:
        return None, check.problems
    assert name is not None and version is not None  # guaranteed when no problem was recorded
    return Benchmark(name, version, description, subjects, relations, tuple(cases), spec_path), []


def _parse_subjects(check: _Checker, data: dict[str, Any]) -> dict[str, Subject]:
    subjects: dict[str, Subject] = {}
    for where, item in check.mappings(data, "subjects", required=True):
        sid = check.identifier(item, where)
        class_noun = check.string(item, "class_noun", where)
        category = check.string(item, "category", where)
        images = check.string_list(item, "images", where, required=True)
        masks = check.string_list(item, "masks", where, required=False)
        if masks and len(masks) != len(images):
            check.add(f"{where}.masks", f"expected one mask per image ({len(images)}), got {len(masks)}")
        if sid is None or class_noun is None or category is None:
            continue
        if sid in subjects:
            check.add(f"{where}.id", f"duplicate subject id {sid!r}")
            continue
        subjects[sid] = Subject(sid, class_noun, category, tuple(images), tuple(masks))
    return subjects


def _parse_relations(check: _Checker, data: dict[str, Any]) -> dict[str, Relation]:
    relations: dict[str, Relation] = {}
    kinds = [k.value for k in RelationKind]
    for where, item in check.mappings(data, "relations", required=True):
        rid = check.identifier(item, where)
        phrase = check.string(item, "phrase", where)
        kind_value = item.get("kind")
        kind = None
        if kind_value not in kinds:
            check.add(f"{where}.kind", f"expected one of {', '.join(kinds)}, got {kind_value!r}")
        else:
            kind = RelationKind(kind_value)
        fits = _parse_fits(check, item.get("fits"), f"{where}.fits")
        poses = _parse_poses(check, item.get("reference_poses"), f"{where}.reference_poses")
        if rid is None or phrase is None or kind is None or fits is None or poses is None:
            continue
        if rid in relations:
            check.add(f"{where}.id", f"duplicate relation id {rid!r}")
            continue
        relations[rid] = Relation(rid, phrase, kind, fits, poses)
    return relations


def _parse_fits(check: _Checker, value: Any, where: str) -> tuple[tuple[str, ...], ...] | None:
    expected = "a list with one list of subject categories per role (at least 2 roles)"
    if not isinstance(value, list) or len(value) < 2:
        check.add(where, f"expected {expected}, got {value!r}")
        return None
    roles = []
    for i, role in enumerate(value):
        if not isinstance(role, list) or not role or not all(isinstance(c, str) and c for c in role):
            check.add(f"{where}[{i}]", f"expected a non-empty list of category names, got {role!r}")
            return None
        roles.append(tuple(role))
    return tuple(roles)


def _parse_poses(check: _Checker, value: Any, where: str) -> tuple[ReferencePose, ...] | None:
    if value is None:
        return ()
    if not isinstance(value, list):
        check.add(where, f"expected a list of reference poses, got {value!r}")
        return None
    poses = []
    ok = True
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            check.add(at, f"expected a mapping with keypoints, skeleton, image, masks; got {item!r}")
            ok = False
            continue
        keypoints = check.string(item, "keypoints", at)
        skeleton = check.string(item, "skeleton", at)
        if skeleton is not None and skeleton not in SKELETONS:
            check.add(f"{at}.skeleton", f"expected one of {', '.join(SKELETONS)}, got {skeleton!r}")
            skeleton = None
        image = check.string(item, "image", at, required=False)
        masks = check.string_list(item, "masks", at, required=False)
        if keypoints is None or skeleton is None:
            ok = False
            continue
        poses.append(ReferencePose(keypoints, skeleton, image, tuple(masks)))
    return tuple(poses) if ok else None


def box_problem(value: Any, kinds: tuple[type, ...] = (list, tuple)) -> str | None:
    """What is wrong with a layout box (``[x0, y0, x1, y1]`` of one of ``kinds``, normalised to
    [0, 1] with x0 < x1 and y0 < y1), None when it is fine; spec files (lists only) and
    ``relbench.score`` share it."""
    if (
        not isinstance(value, kinds)
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        return f"expected [x0, y0, x1, y1] as 4 numbers, got {value!r}"
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        return f"coordinates must be normalised to [0, 1], got {value!r}"
    if not (x0 < x1 and y0 < y1):
        return f"expected x0 < x1 and y0 < y1, got {value!r}"
    return None


def _parse_box(check: _Checker, value: Any, where: str) -> tuple[float, float, float, float] | None:
    problem = box_problem(value, (list,))
    if problem:
        check.add(where, problem)
        return None
    x0, y0, x1, y1 = (float(v) for v in value)
    return (x0, y0, x1, y1)


def _parse_cases(
    check: _Checker, data: dict[str, Any], subjects: dict[str, Subject], relations: dict[str, Relation]
) -> list[Case]:
    cases: list[Case] = []
    seen: set[str] = set()
    for where, item in check.mappings(data, "cases", required=True):
        cid = check.identifier(item, where)
        rid = check.string(item, "relation", where)
        prompt = check.string(item, "prompt", where)
        sids = check.string_list(item, "subjects", where, required=True)
        ok = cid is not None and rid is not None and prompt is not None and bool(sids)
        for i, sid in enumerate(sids):
            if sid not in subjects:
                check.add(f"{where}.subjects[{i}]", subjects_unknown(sid, subjects))
                ok = False
        if len(set(sids)) != len(sids):
            check.add(f"{where}.subjects", f"a subject appears twice: {sids}")
            ok = False
        relation = relations.get(rid) if rid else None
        if rid is not None and relation is None:
            check.add(f"{where}.relation", f"unknown relation {rid!r}; expected one of {', '.join(sorted(relations))}")
            ok = False
        raw_boxes = item.get("boxes")
        boxes = []
        if not isinstance(raw_boxes, list) or len(raw_boxes) != len(sids):
            check.add(f"{where}.boxes", f"expected one box per subject ({len(sids)}), got {raw_boxes!r}")
            ok = False
        else:
            for i, raw in enumerate(raw_boxes):
                box = _parse_box(check, raw, f"{where}.boxes[{i}]")
                ok = ok and box is not None
                boxes.append(box)
        if relation is not None and ok:
            if len(sids) != relation.arity:
                check.add(f"{where}.subjects", f"relation {relation.id!r} takes {relation.arity} subjects, got {len(sids)}")
                ok = False
            else:
                for i, (sid, role) in enumerate(zip(sids, relation.fits)):
                    if subjects[sid].category not in role:
                        check.add(
                            f"{where}.subjects[{i}]",
                            f"subject {sid!r} (category {subjects[sid].category!r}) does not fit role {i} of "
                            f"relation {relation.id!r}; expected a category in {list(role)}",
                        )
                        ok = False
        if cid is not None and cid in seen:
            check.add(f"{where}.id", f"duplicate case id {cid!r}")
            ok = False
        if not ok:
            continue
        assert cid is not None and rid is not None and prompt is not None
        seen.add(cid)
        cases.append(Case(cid, tuple(sids), rid, prompt, tuple(b for b in boxes if b is not None)))
    return cases


def subjects_unknown(sid: str, subjects: dict[str, Subject]) -> str:
    import difflib

    close = difflib.get_close_matches(sid, list(subjects), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown subject {sid!r}{hint}"


def load_spec(path: str | Path) -> Benchmark:
    """Read and check a spec file's structure; raises SpecError listing every problem."""
    path = Path(path)
    benchmark, problems = parse_spec(read_spec_file(path), str(path), spec_path=path)
    if problems:
        raise SpecError(problems)
    assert benchmark is not None
    return benchmark


def check_files(benchmark: Benchmark, data_root: Path) -> tuple[list[Problem], int]:
    """Check every file the benchmark names; returns (problems, number of images checked)."""
    file = str(benchmark.spec_path) if benchmark.spec_path else benchmark.name
    problems: list[Problem] = []
    sizes: dict[str, tuple[int, int]] = {}

    def check_image(ref: str, field: str) -> tuple[int, int] | None:
        if ref in sizes:
            return sizes[ref]
        try:
            path = resolve_path(ref, data_root, benchmark.spec_dir)
        except RelbenchError as exc:
            problems.append(Problem(file, field, str(exc)))
            return None
        if not path.is_file():
            where = "" if is_bundled(ref) else f" (data root {data_root})"
            problems.append(Problem(file, field, f"image not found: {path}{where}"))
            return None
        try:
            # Decoded in full, as evaluation will: a header that parses is not enough.
            with open_image(path) as image:
                size = image.size
        except RelbenchError as exc:  # the line evaluation would end with
            problems.append(Problem(file, field, str(exc)))
            return None
        sizes[ref] = size
        return size

    for sid, subject in benchmark.subjects.items():
        for i, ref in enumerate(subject.images):
            size = check_image(ref, f"subjects[{sid}].images[{i}]")
            if subject.masks:
                mask_size = check_image(subject.masks[i], f"subjects[{sid}].masks[{i}]")
                if size and mask_size and size != mask_size:
                    problems.append(
                        Problem(file, f"subjects[{sid}].masks[{i}]", f"mask size {mask_size} does not match image size {size}")
                    )
    for rid, relation in benchmark.relations.items():
        for i, pose in enumerate(relation.reference_poses):
            where = f"relations[{rid}].reference_poses[{i}]"
            if pose.image:
                check_image(pose.image, f"{where}.image")
            for j, mask in enumerate(pose.masks):
                check_image(mask, f"{where}.masks[{j}]")
            problems.extend(_check_keypoints(file, where, pose, data_root, benchmark.spec_dir))
    return problems, len(sizes)


def _check_keypoints(file: str, where: str, pose: ReferencePose, data_root: Path, spec_dir: Path | None) -> list[Problem]:
    path = resolve_path(pose.keypoints, data_root, spec_dir)
    field = f"{where}.keypoints"
    if not path.is_file():
        return [Problem(file, field, f"keypoint file not found: {path} (data root {data_root})")]
    try:
        points, _ = load_pose(path)
    except KeypointFileError as exc:
        return [Problem(file, field, str(exc))]
    problems = []
    expected_k = SKELETONS[pose.skeleton].size
    if points.shape[1] != expected_k:
        problems.append(Problem(file, field, f"expected {expected_k} keypoints per instance for skeleton {pose.skeleton!r}, got {points.shape[1]}"))
    if pose.masks and points.shape[0] != len(pose.masks):
        problems.append(Problem(file, field, f"{points.shape[0]} instances but {len(pose.masks)} masks"))
    return problems


def validate_spec(path: str | Path, data_root: Path, *, files: bool = True) -> tuple[Benchmark | None, list[Problem], int]:
    """Everything `relbench data validate` reports: structure first, then files when it parses."""
    path = Path(path)
    try:
        data = read_spec_file(path)
    except RelbenchError as exc:
        return None, [Problem(str(path), "(file)", str(exc).removeprefix(f"{path}: "))], 0
    benchmark, problems = parse_spec(data, str(path), spec_path=path)
    if benchmark is None or not files:
        return benchmark, problems, 0
    file_problems, n_images = check_files(benchmark, data_root)
    return benchmark, file_problems, n_images
