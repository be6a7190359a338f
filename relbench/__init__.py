"""relbench: benchmark and evaluation toolkit for relation-aware customized image generation.

The public Python API (everything else is internal; docs/ARCHITECTURE.md):

* ``load_runs(*paths, wide=False)``: runs as a pandas table (tidy: one row per image and metric);
* ``leaderboard(df, headline=None)`` and ``compare(df, a, b)``: the numbers of ``relbench
  leaderboard`` and ``relbench compare``;
* ``score(images, *, prompts=..., subjects=..., relation=..., boxes=..., metrics=...)`` and the
  reusable ``Scorer(metrics, profile=..., device=..., models=...)``: metrics on images in memory;
* ``load_benchmark(name_or_path)`` and the data classes ``Benchmark``, ``Subject``, ``Relation``,
  ``RelationKind``, ``Case``, ``ReferencePose``; ``RelbenchError``, the error of every user mistake.

Names are imported on first use (module ``__getattr__``), so ``import relbench`` loads neither
pandas nor torch; ``score`` imports torch when it builds the metrics.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> "module:attribute" it is imported from on first use.
_EXPORTS: dict[str, str] = {
    "load_runs": "relbench.analysis:load_runs",
    "leaderboard": "relbench.analysis:leaderboard",
    "compare": "relbench.analysis:compare",
    "score": "relbench.scoring:score",
    "Scorer": "relbench.scoring:Scorer",
    "load_benchmark": "relbench.benchmarks:load_benchmark",
    "Benchmark": "relbench.benchmark:Benchmark",
    "Subject": "relbench.benchmark:Subject",
    "Relation": "relbench.benchmark:Relation",
    "RelationKind": "relbench.benchmark:RelationKind",
    "Case": "relbench.benchmark:Case",
    "ReferencePose": "relbench.benchmark:ReferencePose",
    "RelbenchError": "relbench.errors:RelbenchError",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from relbench.analysis import compare, leaderboard, load_runs
    from relbench.benchmark import Benchmark, Case, ReferencePose, Relation, RelationKind, Subject
    from relbench.benchmarks import load_benchmark
    from relbench.errors import RelbenchError
    from relbench.scoring import Scorer, score


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'relbench' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
