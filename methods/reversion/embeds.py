"""The learned relation token, saved the way diffusers' textual inversion saves embeddings.

``learned_embeds.safetensors`` holds one tensor named after the placeholder token (``"<R>"``) of
shape ``(1, D)`` (D = 768 for SD 1.5), so ``StableDiffusionPipeline.load_textual_inversion(path,
token=...)`` reads it. ReVersion's own ``learned_embeds.bin`` (a pickled ``{"<R>": (D,)}``) is read
too, with ``weights_only=True``.

During training the token's vector is the only trainable parameter: ``RelationEmbedding`` wraps
the text encoder's frozen token embedding and substitutes the vector wherever the token's id
appears, which is equivalent to the reference's "train the whole embedding matrix, then restore
every other row after each step" (Adam is elementwise and the other rows never move).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from relbench.atomic import atomic_save_safetensors
from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from torch import Tensor

EMBEDS_NAME = "learned_embeds.safetensors"


class RelationEmbedding(nn.Module):
    """A frozen token embedding with one trainable row: the relation token's."""

    def __init__(self, base: nn.Embedding, token_id: int, initial: "Tensor"):
        super().__init__()
        if not 0 <= token_id < base.num_embeddings:
            raise ValueError(f"token id {token_id} outside the embedding's {base.num_embeddings} rows")
        self.base = base
        self.base.requires_grad_(False)
        self.token_id = token_id
        self.relation = nn.Parameter(initial.detach().clone().float().reshape(-1))

    @property
    def weight(self) -> "Tensor":  # what callers of get_input_embeddings().weight expect
        return self.base.weight

    def forward(self, input_ids: "Tensor") -> "Tensor":
        embeds = self.base(input_ids)
        mask = (input_ids == self.token_id).unsqueeze(-1)
        return torch.where(mask, self.relation.to(embeds.dtype), embeds)


def save_learned_embeds(vector: "Tensor", token: str, folder: Path, name: str = EMBEDS_NAME,
                        metadata: dict[str, str] | None = None) -> Path:
    """Write ``{token: (1, D)}`` atomically; returns the file's path."""
    state = {token: vector.detach().float().reshape(1, -1).cpu().contiguous()}
    return atomic_save_safetensors(folder / name, state, metadata)


def read_learned_embeds(path: Path) -> tuple[str, "Tensor"]:
    """(token, vector (D,)) from a diffusers-format ``.safetensors`` or ReVersion's ``.bin``."""
    if not path.is_file():
        raise RelbenchError(f"{path}: learned relation embedding not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files: one clear line, not a traceback
        raise RelbenchError(f"{path}: not a readable embedding file ({' '.join(str(exc).split())[:160]})") from exc
    if not isinstance(state, dict) or len(state) != 1:
        raise RelbenchError(f"{path}: expected exactly one embedding ({{token: tensor}}), got {type(state).__name__} with {len(state) if isinstance(state, dict) else 0} entries")
    token, vector = next(iter(state.items()))
    if not isinstance(vector, torch.Tensor) or vector.dim() not in (1, 2) or (vector.dim() == 2 and vector.shape[0] != 1):
        raise RelbenchError(f"{path}: {token}: expected a (D,) or (1, D) tensor, got {getattr(vector, 'shape', type(vector).__name__)}")
    return str(token), vector.reshape(-1).float()
