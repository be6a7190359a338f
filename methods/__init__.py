"""Generation methods, registered lazily so that listing them imports no torch.

Each entry names its class as ``"module:Class"`` and carries the metadata that ``relbench methods
list`` shows (summary, profiles it runs in, whether it trains). To add a method, write
``methods/<name>/method.py`` with a ``relbench.method.Method`` subclass and register it here.
"""

from relbench.registry import Registry

METHODS: Registry = Registry("method")

METHODS.register(
    "reference-collage",
    "relbench.methods.reference_collage.method:ReferenceCollage",
    summary="Control: each subject's reference pasted into its layout box (identity without relation).",
    profiles=("tiny", "full"),
    trains=False,
)
METHODS.register(
    "sdxl",
    "relbench.methods.sdxl.method:SDXL",
    summary="Control: SDXL text-to-image from the prompt alone (no customization).",
    profiles=("tiny", "full"),
    trains=False,
)
