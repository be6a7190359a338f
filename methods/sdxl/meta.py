"""sdxl's metadata: what `relbench methods list` and the CLI read without importing torch;
``SDXL`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="sdxl",
    target="relbench.methods.sdxl.method:SDXL",
    summary="Control: SDXL text-to-image from the prompt alone (no customization).",
)
