"""MS-Diffusion: the grounding resampler, masked decoupled cross-attention and layout-conditioned SDXL."""
