"""dreambooth-lora's metadata: what `relbench methods list` and the CLI read without importing torch;
``DreamBoothLoRA`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="dreambooth-lora",
    target="relbench.methods.dreambooth_lora.method:DreamBoothLoRA",
    summary="DreamBooth-LoRA: SDXL LoRA fine-tuned per subject set (diffusers recipe; a rare token per subject), trained on first use and cached.",
    trainer="relbench.methods.dreambooth_lora.train",
)
