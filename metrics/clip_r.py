"""CLIP-R: ``100 * cos`` between the generated image and the relation phrase alone.

DreamRelation's table reports CLIP-R beside CLIP-T: the same CLIP similarity, with the text
reduced to the relation phrase (e.g. "hugging" instead of "A cat is hugging with a plushie bear."),
so that it measures whether the relation is shown rather than whether the subjects are. It uses the
same CLIP model, embedding and scale as CLIP-T (``relbench.metrics.clip``; the run context's shared
embedder, so the model loads once for clip_t, clip_i and clip_r).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from relbench.errors import RelbenchError
from relbench.metrics.base import MetricResult, ScoringSample
from relbench.metrics.clip import _UsesCLIP
from relbench.metrics.clip_r_meta import INFO
from relbench.profiles import RunContext

if TYPE_CHECKING:
    import torch


class CLIPRScore(_UsesCLIP):
    info = INFO

    def __init__(self, context: RunContext, model: Any = None, **kwargs: Any):
        super().__init__(context, model, **kwargs)
        self._text_cache: dict[str, "torch.Tensor"] = {}  # a benchmark has few relation phrases

    def score(self, samples: Sequence[ScoringSample]) -> list[MetricResult]:
        import torch

        from relbench.metrics.functional.similarity import clip_t_score

        for sample in samples:
            if not sample.relation_phrase.strip():
                raise RelbenchError(f"case {sample.case_id}: empty relation phrase; CLIP-R compares the image with it")
        if not samples:
            return []
        images = self.embed_images([sample.image for sample in samples])
        new = list(dict.fromkeys(s.relation_phrase for s in samples if s.relation_phrase not in self._text_cache))
        if new:
            self._text_cache.update(zip(new, self.embedder.embed_texts(new)))
        texts = torch.stack([self._text_cache[sample.relation_phrase] for sample in samples])
        return [MetricResult(value=float(v)) for v in clip_t_score(images, texts)]

    def settings(self) -> dict[str, Any]:
        return {
            **self._clip_settings(),
            "pooling": "image_embeds (CLS -> visual_projection) vs text_embeds (EOS -> text_projection), L2-normalised",
            "text": "relation phrase alone, as written in the benchmark spec (no template)",
            "text_max_tokens": self.embedder.max_text_tokens,
        }
