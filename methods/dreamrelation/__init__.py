"""DreamRelation (CVPR 2025): relation-aware customization with a per-relation LoRA on SDXL.

``data``: the training triplets (concept images, relation image, masks, keypoints): reading,
validation, instance-to-entity association and augmentation that moves keypoints with the pixels.
"""
