"""omnigen's metadata: what `relbench methods list` and the CLI read without importing torch;
``OmniGen`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="omnigen",
    target="relbench.methods.omnigen.method:OmniGen",
    summary="OmniGen v1: subject references as <img> inputs named in the prompt.",
)
