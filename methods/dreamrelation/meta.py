"""dreamrelation's metadata: what `relbench methods list` and the CLI read without importing torch;
``DreamRelation`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="dreamrelation",
    target="relbench.methods.dreamrelation.method:DreamRelation",
    summary="DreamRelation: SDXL + MS-Diffusion adapter + a relation LoRA per relation (--lora; layout boxes).",
    # `--method all` includes it only when its LoRAs are given (--lora).
    requires=("loras",),
    trainer="relbench.methods.dreamrelation.train",
    options={"--lora": "loras"},  # `--lora X` is `--set dreamrelation.loras=X`
)
