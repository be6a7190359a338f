"""custom-diffusion's metadata: what `relbench methods list` and the CLI read without importing torch;
``CustomDiffusion`` takes its name and profiles from it (``info = INFO``)."""

from relbench.plugins import MethodInfo

INFO = MethodInfo(
    name="custom-diffusion",
    target="relbench.methods.custom_diffusion.method:CustomDiffusion",
    summary="Custom Diffusion on SDXL: cross-attention K/V + a <newN> token per subject, fine-tuned per subject set (authors' recipe), trained on first use and cached.",
    trainer="relbench.methods.custom_diffusion.train",
)
