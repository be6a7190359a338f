"""Custom Diffusion (Kumari et al., CVPR 2023) on SDXL: cross-attention K/V and a modifier token per subject, fine-tuned per subject set."""
