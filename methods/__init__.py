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
METHODS.register(
    "ip-adapter",
    "relbench.methods.ip_adapter.method:IPAdapter",
    summary="IP-Adapter Plus (SDXL, ViT-H): one reference per subject, each masked to its layout box.",
    profiles=("tiny", "full"),
    trains=False,
)
METHODS.register(
    "omnigen",
    "relbench.methods.omnigen.method:OmniGen",
    summary="OmniGen v1: subject references as <img> inputs named in the prompt.",
    profiles=("tiny", "full"),
    trains=False,
)
METHODS.register(
    "reversion",
    "relbench.methods.reversion.method:ReVersion",
    summary="ReVersion: relation token <R> inverted from exemplar images (SD 1.5, steering loss) with the subjects' nouns; no subject references.",
    profiles=("tiny", "full"),
    trains=True,
    requires=("exemplars",),
)
METHODS.register(
    "folder",
    "relbench.methods.folder.method:Folder",
    summary="Images made elsewhere: --set folder.path=DIR (<case_id>/<seed>.png) or FILE.csv, folder.name=NAME.",
    profiles=("tiny", "full"),
    trains=False,
    requires=("path",),
)
METHODS.register(
    "dreambooth-lora",
    "relbench.methods.dreambooth_lora.method:DreamBoothLoRA",
    summary="DreamBooth-LoRA: SDXL LoRA fine-tuned per subject set (diffusers recipe; a rare token per subject), trained on first use and cached.",
    profiles=("tiny", "full"),
    trains=True,
)
METHODS.register(
    "custom-diffusion",
    "relbench.methods.custom_diffusion.method:CustomDiffusion",
    summary="Custom Diffusion on SDXL: cross-attention K/V + a <newN> token per subject, fine-tuned per subject set (authors' recipe), trained on first use and cached.",
    profiles=("tiny", "full"),
    trains=True,
)
