"""reversion's metadata: what `relbench methods list` and the CLI read without importing torch;
``ReVersion`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="reversion",
    target="relbench.methods.reversion.method:ReVersion",
    summary="ReVersion: relation token <R> inverted from exemplar images (SD 1.5, steering loss) with the subjects' nouns; no subject references.",
    requires=("exemplars",),
    trainer="relbench.methods.reversion.train",
)
