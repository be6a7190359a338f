"""reference-collage's metadata: what `relbench methods list` and the CLI read without importing torch;
``ReferenceCollage`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="reference-collage",
    target="relbench.methods.reference_collage.method:ReferenceCollage",
    summary="Control: each subject's reference pasted into its layout box (identity without relation).",
)
