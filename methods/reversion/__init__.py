"""ReVersion (Huang et al., SIGGRAPH Asia 2024): relation inversion into a token ``<R>`` on SD 1.5.

``data``: exemplars (ReVersion folders, DreamRelation folders, benchmark reference poses);
``losses``: the relation-steering contrastive loss and relation-focal importance sampling;
``embeds``: the trainable token and its textual-inversion file; ``models``: SD 1.5, pretrained or
tiny; ``train``: the Accelerate training entry; ``method``: the ``reversion`` baseline.
"""
