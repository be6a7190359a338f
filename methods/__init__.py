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
METHODS.register(
    "ms-diffusion",
    "relbench.methods.ms_diffusion.method:MSDiffusion",
    summary="MS-Diffusion: zero-shot SDXL + grounding adapter with layout boxes and phrases (DreamRelation without its LoRA).",
    profiles=("tiny", "full"),
    trains=False,
)
METHODS.register(
    "dreamrelation",
    "relbench.methods.dreamrelation.method:DreamRelation",
    summary="DreamRelation: SDXL + MS-Diffusion adapter + a relation LoRA per relation (--lora; layout boxes).",
    profiles=("tiny", "full"),
    trains=True,
    # Needs these settings (--lora): `--method all` includes it only when they are given.
    requires=("loras",),
)
