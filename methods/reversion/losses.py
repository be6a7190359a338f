"""ReVersion's two training devices, as pure functions over tensors.

* **Relation-steering contrastive loss** (L_steer): the relation token ``<R>``'s input embedding
  is pulled towards prepositions (positives) and pushed away from the entity words of the
  exemplars' coarse descriptions (negatives), as a multi-instance InfoNCE over cosine
  similarities at temperature tau::

      s_x     = cos(e_R, e_x) / tau
      L_steer = logsumexp_{x in P u N} s_x  -  logsumexp_{x in P} s_x

  Only ``e_R`` receives gradients: positive and negative embeddings are constants.
  Positives: for every sample, ``num_positives`` words drawn from ``RELATION_WORDS``; every token
  of them counts (special tokens and padding do not). Negatives: every token of the batch's
  descriptions that is not a stop word, a relation word, a special token or ``<R>`` itself.
* **Relation-focal importance sampling**: DDPM timesteps drawn with probability
  ``f(t) = (1 - alpha cos(pi t / T)) / T`` (normalised over t = 0..T-1), which favours the
  noisy steps where layout and interaction are decided (alpha = 0.5 in the authors' recipe).

Facts (formula, temperature 0.07, 4 positives, weight 0.01, alpha 0.5, the two word lists) are
from the public ReVersion code (github.com/ziqihuangg/ReVersion, ``train.py`` and
``templates/``), written here independently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# ReVersion's positive words (its templates/relation_words.py): English prepositions.
RELATION_WORDS: tuple[str, ...] = (
    "aboard", "about", "above", "across", "after", "against", "along", "alongside", "amid", "amidst",
    "among", "amongst", "anti", "around", "astride", "at", "atop", "before", "behind", "below",
    "beneath", "beside", "between", "beyond", "by", "down", "following", "from", "in", "including",
    "inside", "into", "near", "of", "off", "on", "onto", "opposite", "out", "outside", "over",
    "past", "regarding", "round", "through", "throughout", "to", "toward", "towards", "under",
    "underneath", "up", "upon", "versus", "with", "within",
)

# ReVersion's stop words (its templates/stop_words.py, NLTK's English list): never negatives.
STOP_WORDS: tuple[str, ...] = (
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself",
    "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself",
    "they", "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that",
    "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
    "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as",
    "until", "while", "of", "at", "by", "for", "with", "about", "against", "between", "into", "through",
    "during", "before", "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off",
    "over", "under", "again", "further", "then", "once", "here", "there", "when", "where", "why", "how",
    "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not",
    "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "should",
    "now",
)


def steer_loss(relation: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """L_steer for one relation embedding ``(D,)`` against positives ``(P, D)`` and negatives ``(N, D)``.

    With no negatives the loss is 0 (every candidate is a positive); with no positive it is
    undefined, so ``P >= 1`` is required.
    """
    if relation.dim() != 1 or positives.dim() != 2 or negatives.dim() != 2:
        raise ValueError(f"expected (D,), (P, D), (N, D); got {tuple(relation.shape)}, {tuple(positives.shape)}, {tuple(negatives.shape)}")
    if positives.shape[0] == 0:
        raise ValueError("steer_loss needs at least one positive embedding")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    anchor = F.normalize(relation.float(), dim=0)
    # Positives and negatives are targets, not trained: no gradient flows into them.
    candidates = F.normalize(torch.cat([positives, negatives]).detach().float(), dim=1)
    logits = candidates @ anchor / temperature  # (P + N,)
    return torch.logsumexp(logits, dim=0) - torch.logsumexp(logits[: positives.shape[0]], dim=0)


def excluded_token_ids(tokenizer: "PreTrainedTokenizerBase", placeholder_id: int) -> list[int]:
    """Token ids that are never negatives: stop words, relation words, special tokens, ``<R>``."""
    ids = {token for word in word_token_ids(tokenizer, dict.fromkeys((*STOP_WORDS, *RELATION_WORDS))) for token in word}
    ids.update(i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None)
    ids.add(placeholder_id)
    return sorted(ids)


def negative_mask(input_ids: Tensor, excluded: Tensor) -> Tensor:
    """True where a description token is a negative (an entity word), for ``(B, L)`` ids."""
    return ~torch.isin(input_ids, excluded.to(input_ids.device))


def word_token_ids(tokenizer: "PreTrainedTokenizerBase", words: Iterable[str]) -> list[list[int]]:
    """Each word's BPE token ids (no special tokens). CLIP's BPE works word by word, so tokens of
    several words joined by spaces are the concatenation of these."""
    return [list(tokenizer(word, add_special_tokens=False, truncation=False).input_ids) for word in words]


def importance_probabilities(num_timesteps: int, alpha: float) -> Tensor:
    """Relation-focal sampling distribution over t = 0..T-1 (float64, sums to 1)."""
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1) so that every timestep keeps a chance, got {alpha}")
    t = torch.arange(num_timesteps, dtype=torch.float64)
    weights = (1 - alpha * torch.cos(math.pi * t / num_timesteps)) / num_timesteps
    return weights / weights.sum()


def sample_positive_ids(word_ids: Sequence[Sequence[int]], count: int, generator: torch.Generator) -> list[int]:
    """Token ids of ``count`` distinct relation words drawn at random (one sample's positives)."""
    chosen = torch.randperm(len(word_ids), generator=generator, device=generator.device)[:count].tolist()
    return [token for index in chosen for token in word_ids[index]]
