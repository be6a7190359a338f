"""Hostile specs and images: every one ends in one clear line (exit 2), never a traceback or a hang.

One test per class of hostile input: YAML aliases, deep nesting, huge values quoted in errors,
decompression bombs, images that only decode badly, ids that cannot name files, and a sweep
output folder that cannot be made.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image
from test_spec import good_spec, write_files

from relbench.data_root import MAX_IMAGE_PIXELS, load_image, open_image
from relbench.errors import MAX_LINE_CHARS, Problem, RelbenchError, clip
from relbench.spec import MAX_ID_CHARS, MAX_NESTING, load_spec, parse_spec, read_spec_file, validate_spec


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`relbench ARGS` in this process, through cli.main as the console script runs it."""
    import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["relbench", *args])
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: ") and len(line) <= len("error: ") + MAX_LINE_CHARS + 40
    return line


# --- YAML anchors and aliases -----------------------------------------------------------------

BOMB = """name: bomb
version: "1"
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
subjects: *i
"""


def test_yaml_anchors_and_aliases_are_refused_with_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB)
    refused = f"{spec}: line 3: YAML anchors and aliases (&name, *name) are not allowed in a spec; write each value out"
    with pytest.raises(RelbenchError) as info:
        read_spec_file(spec)
    assert str(info.value) == refused

    code, out, err = cli(monkeypatch, capsys, "data", "validate", "--spec", str(spec))
    assert code == 2 and out == f"{spec}: (file): {refused.removeprefix(f'{spec}: ')}\n"
    assert err == f"{spec}: 1 problem found\n"
    line = one_error_line(*cli(monkeypatch, capsys, "evaluate", "-b", str(spec), "-o", str(tmp_path / "run"))[::2])
    assert line == f"error: {refused}"

    # An anchor alone (no alias yet) is refused too, and so is a merge key's alias.
    spec.write_text("name: x\nbase: &base {a: 1}\n")
    with pytest.raises(RelbenchError, match=r": line 2: YAML anchors and aliases"):
        read_spec_file(spec)
    spec.write_text("name: x\nother:\n  <<: *base\n")
    with pytest.raises(RelbenchError, match=r": line 3: YAML anchors and aliases"):
        read_spec_file(spec)


# --- deep nesting -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deep_nesting_is_refused_in_one_line(tmp_path: Path, suffix: str) -> None:
    spec = tmp_path / f"deep{suffix}"
    too_deep = f"nested more than {MAX_NESTING} levels of lists or mappings deep"
    line = "line 1: " if suffix == ".yaml" else ""
    for opening in ("[", "{\"a\": "):
        closing = "]" if opening == "[" else "}"
        spec.write_text(opening * 5000 + closing * 5000)  # was a RecursionError traceback
        with pytest.raises(RelbenchError) as info:
            read_spec_file(spec)
        assert str(info.value) == f"{spec}: {line}{too_deep}"

    # The exact boundary: MAX_NESTING levels parse, one more does not.
    spec.write_text("[" * MAX_NESTING + "]" * MAX_NESTING)
    value = read_spec_file(spec)
    for _ in range(MAX_NESTING - 1):
        (value,) = value
    assert value == []
    spec.write_text("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))
    with pytest.raises(RelbenchError, match=too_deep):
        read_spec_file(spec)


# --- huge values quoted in errors -------------------------------------------------------------


def test_clip_keeps_the_start_and_says_the_original_length() -> None:
    assert clip("a" * 200) == "a" * 200
    assert clip("a" * 201) == "a" * 200 + "… (201 characters)"
    assert clip("x\ny", 10) == "x y"
    assert clip("ab\ncdef", 4) == "ab c… (7 characters)"


def test_a_huge_value_in_a_spec_gives_a_short_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = good_spec()
    spec["version"] = ["x" * 100] * 10_000  # about 1 MB: a message quoting it would be 1 MB long
    spec["cases"][0]["id"] = "c" * 5000
    bench, problems = parse_spec(spec, "big.json")
    assert bench is None
    by_field = {p.field: p for p in problems}
    text = str(by_field["version"])
    assert text.startswith("big.json: version: expected a non-empty string, got ['xxxx")
    # 33 characters of wording + the list's repr: 10 000 quoted items of 102, 9 999 ", ", 2 brackets.
    assert text.endswith("… (1,040,033 characters)") and len(text) < 500
    assert len(str(by_field[f"cases[{'c' * 5000}].id"])) < 700  # the field and the message are both clipped

    path = tmp_path / "big.json"
    path.write_text(json.dumps(spec))
    line = one_error_line(*cli(monkeypatch, capsys, "evaluate", "-b", str(path), "-o", str(tmp_path / "run"))[::2])
    assert line.startswith(f"error: {path}: version: expected a non-empty string, got ['xxx")
    code, out, err = cli(monkeypatch, capsys, "data", "validate", "--spec", str(path))
    assert code == 2 and max(len(line) for line in out.splitlines()) < 1000


def test_problem_formatting_clips_each_part() -> None:
    problem = Problem("f.yaml", "cases[" + "i" * 300 + "]", "got " + "v" * 1000)
    assert str(problem) == (
        "f.yaml: cases[" + "i" * 194 + "… (307 characters): got " + "v" * 396 + "… (1,004 characters)"
    )


# --- images ----------------------------------------------------------------------------------


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (its pixel data stays 4 x 4)."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: width, height, then its CRC at 29
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def noisy_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def corrupt_jpeg() -> bytes:
    """Huffman table counts overwritten: the header parses (and verify() passes), decoding fails."""
    data = bytearray(noisy_jpeg())
    dht = data.find(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16
    return bytes(data)


def test_decompression_bomb_is_one_line_naming_the_file_and_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, spec_dir = tmp_path / "data", tmp_path / "spec"
    write_files(root, spec_dir)
    bomb = root / "subjects/dog/0.png"
    bomb.write_bytes(forged_png(20_000, 20_000))  # was a DecompressionBombError traceback
    limit = f"the limit is {MAX_IMAGE_PIXELS:,} pixels; resize it"
    message = f"{bomb}: cannot read image: 400,000,000 pixels is too large; {limit}"
    with pytest.raises(RelbenchError) as info:
        load_image("subjects/dog/0.png", root)
    assert str(info.value) == message
    (spec_dir / "mini.yaml").write_text(yaml.safe_dump(good_spec()))
    code, out, _ = cli(monkeypatch, capsys, "data", "validate", "--spec", str(spec_dir / "mini.yaml"), "--data-root", str(root))
    assert code == 2 and out == f"{spec_dir / 'mini.yaml'}: subjects[dog].images[0]: {message}\n"

    # Our limit, not PIL's (which warns at ~89 megapixels and raises at twice that): one line, no warning.
    assert MAX_IMAGE_PIXELS == 8192 * 8192
    for width, height in [(8192, 8193), (10_000, 10_000)]:
        bomb.write_bytes(forged_png(width, height))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(RelbenchError) as info:
                open_image(bomb)
        assert str(info.value) == f"{bomb}: cannot read image: {width} x {height} pixels is too large; {limit}"
    # The exact boundary, on real pixels with a small limit.
    Image.new("RGB", (10, 10)).save(tmp_path / "ten.png")
    Image.new("RGB", (10, 11)).save(tmp_path / "eleven.png")
    assert open_image(tmp_path / "ten.png", max_pixels=100).size == (10, 10)
    with pytest.raises(RelbenchError, match=r"10 x 11 pixels is too large; the limit is 100 pixels"):
        open_image(tmp_path / "eleven.png", max_pixels=100)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (noisy_jpeg()[:700], "image file is truncated"),
        (corrupt_jpeg(), "broken data stream when reading image file"),
    ],
)
def test_validate_decodes_every_image_as_evaluation_will(tmp_path: Path, content: bytes, why: str) -> None:
    root, spec_dir = tmp_path / "data", tmp_path / "spec"
    write_files(root, spec_dir)
    bad = root / "subjects/dog/1.png"
    bad.write_bytes(content)
    with Image.open(bad) as image:
        image.verify()  # what validate used to do: it passes on these files
    (spec_dir / "mini.yaml").write_text(yaml.safe_dump(good_spec()))

    _, problems, _ = validate_spec(spec_dir / "mini.yaml", root)

    (problem,) = problems
    assert problem.field == "subjects[dog].images[1]"
    assert problem.message.startswith(f"{bad}: cannot read image: {why}")
    with pytest.raises(RelbenchError) as info:  # the loader evaluation uses: the same line
        load_image("subjects/dog/1.png", root)
    assert str(info.value) == problem.message


# --- ids that name files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case_id", "why"),
    [
        ("c" * 300, f"expected at most {MAX_ID_CHARS} characters (it names files), got 300"),
        ("c" * (MAX_ID_CHARS + 1), f"expected at most {MAX_ID_CHARS} characters (it names files), got {MAX_ID_CHARS + 1}"),
        (".hidden", "expected lowercase letters, digits, '_', '.', '-', starting with a letter or digit"),
        ("a/b", "expected lowercase letters, digits, '_', '.', '-', starting with a letter or digit"),
        ("trailing.", "must not end with '.' (Windows drops it from file names)"),
        ("con", "'con' is a device name Windows reserves; it cannot name a file"),
        ("nul.case", "'nul' is a device name Windows reserves; it cannot name a file"),
        ("com1", "'com1' is a device name Windows reserves; it cannot name a file"),
        ("lpt9", "'lpt9' is a device name Windows reserves; it cannot name a file"),
    ],
)
def test_ids_that_cannot_name_a_file_are_refused(case_id: str, why: str) -> None:
    spec = good_spec()
    spec["cases"][0]["id"] = case_id
    _, problems = parse_spec(spec, "mini.yaml")
    assert [p.message for p in problems] == [f"{case_id!r} is not a valid id: {why}"]


@pytest.mark.parametrize("name", ["c" * MAX_ID_CHARS, "console", "com10", "nul_case", "con-1", "a.b"])
def test_ids_that_name_files_everywhere_are_accepted(name: str) -> None:
    spec = good_spec()
    spec["cases"][0]["id"] = spec["subjects"][0]["id"] = name
    spec["cases"][0]["subjects"][0] = name
    bench, problems = parse_spec(spec, "mini.yaml")
    assert problems == [] and bench is not None and bench.case(name).subjects[0] == name


def test_subject_relation_ids_and_the_name_are_checked_too(tmp_path: Path) -> None:
    spec = good_spec()
    spec["name"] = "aux"
    spec["subjects"][1]["id"] = "prn"
    spec["relations"][0]["id"] = "h" * 101
    _, problems = parse_spec(spec, "mini.yaml")
    assert {p.field for p in problems} >= {"name", "subjects[prn].id", f"relations[{'h' * 101}].id"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(RelbenchError, match=r"^.*s\.yaml: name: 'aux' is not a valid name: 'aux' is a device name"):
        load_spec(path)


# --- other commands ---------------------------------------------------------------------------


def test_sweep_output_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    from relbench.sweep import load_sweep, plan, run_sweep

    (tmp_path / "taken").write_text("a file where the output folder should go")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"output": "taken/out", "profile": "tiny", "benchmarks": ["demo"], "limit": 1,
                                    "metrics": ["clip_t"], "methods": [{"method": "reference-collage"}]}))
    sweep = load_sweep(path)
    with pytest.raises(RelbenchError) as info:
        run_sweep(sweep, plan(sweep), progress=False)
    assert str(info.value) == f"{path}: output: cannot create {tmp_path / 'taken' / 'out'}: Not a directory"


def test_download_under_hf_hub_offline_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cli(monkeypatch, capsys, "data", "download", "--data-root", str(tmp_path))
    assert one_error_line(code, err) == (
        "error: HF_HUB_OFFLINE is set: downloading needs the network; unset it (or set HF_HUB_OFFLINE=0) for this command"
    )
