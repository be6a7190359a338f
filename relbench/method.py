"""The Method interface every generation method implements.

A method is built once per run from a ``RunContext`` (profile, device, dtype, model overrides) and
its own settings dataclass, then asked to ``generate`` batches of requests. Everything that moves
a number goes into ``settings()``; the run store hashes it and writes it into every result row.
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from relbench.benchmark import Box
from relbench.errors import RelbenchError
from relbench.plugins import MethodInfo, assign_class_attributes

if TYPE_CHECKING:
    from PIL import Image

    from relbench.profiles import RunContext


@dataclass(frozen=True)
class SubjectInput:
    """One subject of a request: who it is, what it looks like, and where it goes."""

    id: str
    class_noun: str
    images: tuple["Image.Image", ...]  # reference images, RGB
    box: Box  # normalised (x0, y0, x1, y1) layout box in the output image
    masks: tuple["Image.Image", ...] = ()  # optional foreground masks, one per reference image


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a method may use to produce one image."""

    case_id: str
    prompt: str
    relation_phrase: str
    subjects: tuple[SubjectInput, ...]
    seed: int
    width: int
    height: int
    relation_id: str | None = None  # the benchmark's relation id (methods with per-relation weights)


class Method(ABC):
    """Base class of generation methods.

    Subclasses set ``info`` (their ``MethodInfo``, from a torch-free module; ``name`` and
    ``profiles`` are assigned from it) and ``settings_cls`` (a dataclass of their options, one
    comment per field, with the authors' recommended defaults), and implement ``generate``.
    Training is not part of this interface: trainers are ``relbench train`` entries (the method's
    ``MethodInfo``), and methods that fine-tune per subject set train on first need
    (``relbench.trained_cache``).
    """

    info: ClassVar[MethodInfo]
    name: ClassVar[str]  # from info
    profiles: ClassVar[tuple[str, ...]] = ("tiny", "full")  # from info: the profiles it can run in
    settings_cls: ClassVar[type[Any]]
    # Keys of the models it loads (RunContext.model(key)); their ids go into the settings hash.
    model_keys: ClassVar[tuple[str, ...]] = ()
    min_subjects: ClassVar[int] = 1
    max_subjects: ClassVar[int | None] = None
    # How many requests one generate() call should get; the runner batches by this.
    batch_size: ClassVar[int] = 1
    # --resolution must be a multiple of this (relbench.options.check_resolution; 16 for OmniGen).
    resolution_multiple: ClassVar[int] = 8

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        assign_class_attributes(cls)

    def __init__(self, context: "RunContext", settings: Any | None = None):
        self.context = context
        self.config = settings if settings is not None else self.default_settings(context)
        check_setting_ranges(self.name, self.config)  # settings built in Python, not from --set, too

    @classmethod
    def default_settings(cls, context: "RunContext") -> Any:
        """The settings this method uses in a profile when the user overrides nothing."""
        return cls.settings_cls()

    @classmethod
    def settings_from_overrides(cls, context: "RunContext", overrides: dict[str, str]) -> Any:
        """Apply ``--set key=value`` strings to the default settings, typed by the dataclass."""
        base = cls.default_settings(context)
        fields = {f.name: f for f in dataclasses.fields(base)}
        changes: dict[str, Any] = {}
        for key, raw in overrides.items():
            if key not in fields:
                from relbench.registry import did_you_mean

                raise RelbenchError(
                    f"--set {cls.name}.{key}: unknown setting.{did_you_mean(key, sorted(fields))} Expected one of {', '.join(sorted(fields))}"
                )
            changes[key] = _coerce(raw, getattr(base, key), f"--set {cls.name}.{key}")
        settings = dataclasses.replace(base, **changes)
        check_setting_ranges(cls.name, settings)
        return settings

    @classmethod
    def settings_fingerprint(cls, settings: Any) -> dict[str, Any]:
        """Extra identity of the settings that their values do not show (e.g. hashes of weight
        files named by path); hashed into the run's settings hash. Cheap: no model loads."""
        return {}

    @classmethod
    def check_cases(cls, settings: Any, benchmark: Any, cases: Sequence[Any], seeds: Sequence[int] = ()) -> None:
        """Refuse, before any model loads, cases (and seeds) these settings cannot generate."""

    def use_benchmark(self, benchmark: Any, data_root: Any) -> None:
        """Called once after construction with the benchmark being evaluated, before any
        ``generate`` (e.g. ReVersion reads its relations' exemplar images from it)."""

    def settings(self) -> dict[str, Any]:
        """Every setting that moves a number, as JSON-serialisable values."""
        return {"method": self.name, "profile": self.context.profile, **_jsonable(dataclasses.asdict(self.config))}

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse inputs this method cannot handle, with a clear message."""
        n = len(request.subjects)
        if n < self.min_subjects or (self.max_subjects is not None and n > self.max_subjects):
            most = "any number" if self.max_subjects is None else str(self.max_subjects)
            raise RelbenchError(
                f"case {request.case_id}: method {self.name!r} supports {self.min_subjects} to {most} subjects, got {n}"
            )

    def batch_order(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """The order (indices into ``requests``) in which the runner hands these requests to
        ``generate``, in batches of ``batch_size``: e.g. those one pipeline call can serve next to
        each other. Called once with every request of a run before the first batch; default: as given."""
        return list(range(len(requests)))

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        """One RGB image per request, of the requested size, deterministic given the seed."""

    def train_ahead(self, requests: Sequence[GenerationRequest]) -> None:
        """Train now what ``generate`` would train on first need for these requests (a sweep's
        training job, ``relbench.sweep_launch``); methods that train nothing on demand keep this."""


# The values a settings field accepts: declared on the field, checked by check_setting_ranges.
RANGE = "range"
STEPS = (1, 1000)  # denoising steps: 0 would divide by zero in the scheduler
GUIDANCE = (0, 100)  # classifier-free guidance scales
SEED = (0, 2**32 - 1)  # numpy's seed range (relbench.options.MAX_SEED)


def bounded(default: Any, low: float | None = None, high: float | None = None) -> Any:
    """A settings field whose value (each element, for a tuple) must lie in [low, high] (None: no
    bound), e.g. ``num_inference_steps: int = bounded(30, *STEPS)``."""
    return dataclasses.field(default=default, metadata={RANGE: (low, high)})


def check_setting_ranges(method: str, settings: Any) -> None:
    """Refuse, before any model loads, a value outside its field's declared range and any NaN or
    infinite number: ``--set sdxl.num_inference_steps=0: must be >= 1``."""
    if not dataclasses.is_dataclass(settings):
        return
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        low, high = f.metadata.get(RANGE, (None, None))
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            shown = json.dumps(_jsonable(value)) if isinstance(value, (tuple, list)) else str(value)
            where = f"--set {method}.{f.name}={shown}"
            if not math.isfinite(item):
                raise RelbenchError(f"{where}: must be a finite number")
            if low is not None and item < low:
                raise RelbenchError(f"{where}: must be >= {low}")
            if high is not None and item > high:
                raise RelbenchError(f"{where}: must be <= {high}")


ALL_RELATIONS = "*"  # a per-relation setting's value for every relation


def parse_relation_map(value: str, where: str, what: str) -> dict[str, str]:
    """A per-relation setting: ``"X"`` -> {"*": X}; ``"hug=A,shake=B"`` -> {"hug": A, "shake": B}.

    ``where`` names the option in messages (``--lora``), ``what`` the value (``FILE``, ``DIR``).
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        relation, sep, item = part.partition("=")
        if not sep:
            relation, item = ALL_RELATIONS, part
        relation, item = relation.strip(), item.strip()
        if not relation or not item:
            raise RelbenchError(f"{where} {part!r}: expected {what} or RELATION={what}")
        if relation in out:
            raise RelbenchError(f"{where}: two values for relation {relation!r}")
        out[relation] = item
    return out


def _coerce(raw: str, current: Any, where: str) -> Any:
    """Parse a CLI string into the type of the current value."""
    try:
        if isinstance(current, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if current is None or isinstance(current, str):
            return None if raw.lower() in ("none", "null") and current is None else raw
        if isinstance(current, (tuple, list)):
            value = json.loads(raw)
            # A JSON list; as long as a tuple default (an RGB triple), of integers where it has them.
            if not isinstance(value, list) or (isinstance(current, tuple) and len(value) != len(current)):
                raise ValueError(raw)
            if current and all(type(v) is int for v in current) and not all(type(v) is int for v in value):
                raise ValueError(raw)
            return type(current)(value)
    except ValueError:
        raise RelbenchError(f"{where}: cannot read {raw!r} as {type(current).__name__}") from None
    raise RelbenchError(f"{where}: settings of type {type(current).__name__} cannot be set from the command line")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
