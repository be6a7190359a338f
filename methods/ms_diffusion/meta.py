"""ms-diffusion's metadata: what `relbench methods list` and the CLI read without importing torch;
``MSDiffusion`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="ms-diffusion",
    target="relbench.methods.ms_diffusion.method:MSDiffusion",
    summary="MS-Diffusion: zero-shot SDXL + grounding adapter with layout boxes and phrases (DreamRelation without its LoRA).",
)
