"""What a method or a metric declares about itself: one object, read by listings and by the class.

Each plugin's metadata is one frozen ``MethodInfo`` or ``MetricInfo`` in a module that imports no
torch (``methods/<name>/meta.py``, ``metrics/<module>_meta.py``, or the plugin's own module when it
imports torch only inside functions). Its registry line names that object
(``METHODS.add("relbench.methods.sdxl.meta:INFO")``), so ``relbench methods list``, ``--method all``
and the CLI read it without importing the class. The class sets ``info = INFO``; ``Method`` and
``Metric`` then assign its attributes (``name``, ``profiles``, ``higher_is_better``, ...) from it,
and the registry refuses a class whose ``info`` is not the registered object. One definition, so
the class and the listing cannot disagree.

Outside the repository, a plugin's info is registered at run time (``METHODS.add(...)``) or named
in ``$RELBENCH_METHODS`` / ``$RELBENCH_METRICS`` (comma-separated ``module:ATTR``; the module must
be importable, e.g. on ``PYTHONPATH``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _check(name: str, target: str, profiles: tuple[str, ...]) -> None:
    # Plugin authors' mistakes: found when the registry reads the info, before anything runs.
    from relbench.profiles import PROFILES

    if ":" not in target:
        raise ValueError(f"plugin {name!r}: target must look like 'module:Class', got {target!r}")
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown or not profiles:
        raise ValueError(f"plugin {name!r}: profiles must be some of {', '.join(PROFILES)}, got {profiles!r}")


@dataclass(frozen=True, kw_only=True)
class MethodInfo:
    """A generation method's identity and what listings, ``--method all`` and the CLI need."""

    name: str
    target: str  # "module:Class" of the Method subclass, imported on first use
    summary: str  # one line for `relbench methods list`
    profiles: tuple[str, ...] = ("tiny", "full")  # profiles it runs in
    # Settings without which `--method all` skips it (e.g. dreamrelation's loras).
    requires: tuple[str, ...] = ()
    # Module whose main(argv) is `relbench train NAME` (None: nothing to train).
    trainer: str | None = None
    # CLI shortcut options of evaluate/generate and the setting each fills, e.g. {"--lora": "loras"}:
    # `--lora X` means `--set NAME.loras=X` for every method that declares it.
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.name, self.target, self.profiles)

    @property
    def trains(self) -> bool:
        return self.trainer is not None

    def meta(self) -> dict[str, Any]:
        """The registry entry's metadata (``Entry.meta``)."""
        return {
            "profiles": self.profiles, "trains": self.trains, "requires": self.requires,
            "trainer": self.trainer, "options": dict(self.options),
        }

    def class_attributes(self) -> dict[str, Any]:
        """The Method class attributes that come from here."""
        return {"name": self.name, "profiles": self.profiles}


@dataclass(frozen=True, kw_only=True)
class MetricInfo:
    """A metric's identity, direction and range: what `relbench metrics list`, run.json and rows show."""

    name: str
    target: str  # "module:Class" of the Metric subclass, imported on first use
    summary: str  # one line for `relbench metrics list` and reports
    higher_is_better: bool
    range: tuple[float, float]  # the values it can take (scores are not clamped to it)
    model: str | None = None  # the model key it loads (RunContext.model(key)), if any
    profiles: tuple[str, ...] = ("tiny", "full")
    # Its numbers depend on the embedders' precision (--embedder-dtype): part of its identity in run.json.
    precision: bool = False

    def __post_init__(self) -> None:
        _check(self.name, self.target, self.profiles)
        if len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise ValueError(f"metric {self.name!r}: range must be (low, high) with low < high, got {self.range!r}")

    def meta(self) -> dict[str, Any]:
        """The registry entry's metadata (``Entry.meta``); no ``model`` key for a metric without one."""
        meta: dict[str, Any] = {"higher_is_better": self.higher_is_better, "range": self.range, "profiles": self.profiles}
        if self.model is not None:
            meta["model"] = self.model
        if self.precision:
            meta["precision"] = True
        return meta

    def class_attributes(self) -> dict[str, Any]:
        """The Metric class attributes that come from here."""
        return {
            "name": self.name, "higher_is_better": self.higher_is_better, "value_range": self.range,
            "model_key": self.model, "profiles": self.profiles, "description": self.summary,
        }


def assign_class_attributes(cls: type) -> None:
    """Called by ``Method``/``Metric.__init_subclass__``: a class that sets ``info`` in its own body
    gets its attributes from it (subclasses without their own ``info`` inherit them)."""
    info = cls.__dict__.get("info")
    if info is None:
        return
    if not isinstance(info, (MethodInfo, MetricInfo)):
        raise TypeError(f"{cls.__qualname__}.info must be a MethodInfo or MetricInfo, got {type(info).__name__}")
    for key, value in info.class_attributes().items():
        setattr(cls, key, value)


def add_option_settings(overrides: dict[str, dict[str, str]], option: str, values: list[str] | None) -> None:
    """Put a CLI shortcut option's values (``--lora A --lora B`` -> ``"A,B"``) into ``overrides``
    (method -> setting -> value) as the setting of every method whose info declares the option;
    the shortcut wins over ``--set`` of the same setting."""
    from relbench.methods import METHODS

    if not values:
        return
    for entry in METHODS.entries():
        setting = entry.meta.get("options", {}).get(option)
        if setting is not None:
            overrides.setdefault(entry.name, {})[setting] = ",".join(values)
