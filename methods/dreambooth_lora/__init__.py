"""DreamBooth-LoRA (diffusers' SDXL recipe): a LoRA fine-tuned per subject set, one rare token per subject."""
