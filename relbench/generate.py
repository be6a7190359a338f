"""``relbench generate``: one image from one method, for a benchmark case or ad-hoc inputs.

The method goes through the same lifecycle as in ``relbench evaluate`` (``relbench.runner.build_method``):
for a case, it is handed the benchmark (``use_benchmark``) before it generates.
"""

from __future__ import annotations

from pathlib import Path

from relbench.errors import RelbenchError


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(0 <= v <= 1 for v in values) or not (values[0] < values[2] and values[1] < values[3]):
        raise RelbenchError(f"--box {text!r}: expected x0,y0,x1,y1 normalised to [0, 1] with x0 < x1 and y0 < y1")
    return values  # type: ignore[return-value]


def generate_one(*, method: str, output: Path, benchmark: str, case_id: str | None, images: list[str], phrases: list[str],
                 boxes: list[str], prompt: str | None, relation: str | None, seed: int, profile: str, resolution: int | None,
                 data_root: Path, device: str, model_overrides: dict[str, str], settings: dict[str, str]) -> Path:
    from relbench.benchmark import Benchmark
    from relbench.benchmarks import load_benchmark
    from relbench.data_root import load_image
    from relbench.method import GenerationRequest, SubjectInput
    from relbench.methods import METHODS
    from relbench.options import check_resolution, check_seed, size_multiple
    from relbench.profiles import RunContext
    from relbench.runner import DEFAULT_RESOLUTION, SubjectInputs, build_method, select_methods
    from relbench.runstore import atomic_save_image

    select_methods([method], profile)  # unknown names and profiles: the evaluate messages
    context = RunContext(profile=profile, device=device, model_overrides=model_overrides)
    cls = METHODS.get(method)
    size = check_resolution(DEFAULT_RESOLUTION[profile] if resolution is None else resolution, size_multiple([cls.resolution_multiple]))
    check_seed(seed)
    config = cls.settings_from_overrides(context, settings)
    bench: Benchmark | None = None  # ad-hoc inputs come from no benchmark
    if case_id is not None:
        if images or phrases or boxes or prompt:
            raise RelbenchError("--case takes the images, phrases, boxes and prompt from the benchmark; drop --image/--phrase/--box/--prompt")
        bench = load_benchmark(benchmark)
        try:
            case = bench.case(case_id)
        except KeyError:
            raise RelbenchError(f"--case {case_id!r}: not a case of {bench.label}") from None
        cls.check_cases(config, bench, [case])
        request = SubjectInputs(bench, data_root).request(case, seed, size, size)
    else:
        if not images or not prompt:
            raise RelbenchError("give --case ID, or --image (one per subject), --phrase, --box and --prompt")
        if not (len(images) == len(phrases) == len(boxes)):
            raise RelbenchError(f"--image, --phrase and --box must be given once per subject; got {len(images)}, {len(phrases)}, {len(boxes)}")
        for ref in images:
            if not Path(ref).expanduser().is_file():
                raise RelbenchError(f"--image {ref}: no such file")
        subjects = tuple(
            SubjectInput(f"subject{i}", noun, (load_image(str(Path(ref).expanduser().resolve()), data_root),), _box(b))
            for i, (ref, noun, b) in enumerate(zip(images, phrases, boxes))
        )
        request = GenerationRequest("custom", prompt, relation or "", subjects, seed, size, size, relation)
    (image,) = build_method(method, context, config, bench, data_root).generate([request])
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(image.convert("RGB"), output)
    return output
