"""OmniGen (v1, diffusers): the subjects' images placed in the prompt with <img><|image_k|></img> tags."""
