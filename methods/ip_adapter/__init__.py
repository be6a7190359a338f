"""IP-Adapter (SDXL, Plus ViT-H): one reference image per subject, each masked to its layout box."""
