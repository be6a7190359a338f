"""``reference-collage``: each subject's reference image pasted into its layout box.

A control with near-perfect identity (the references themselves are in the image) and no relation:
it tells how much of an identity score is reachable without generating anything, and a relation
judge should say "no" to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relbench.method import GenerationRequest, Method, bounded
from relbench.methods.reference_collage.meta import INFO

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class ReferenceCollageSettings:
    # RGB of the neutral background the references are pasted on.
    background: tuple[int, int, int] = bounded((127, 127, 127), 0, 255)
    # "contain": keep the reference's aspect ratio, centred in its box; "stretch": fill the box.
    fit: str = "contain"
    # Which reference image a subject shows: the (seed mod number of references)-th one, so that
    # several seeds show several references.
    reference_choice: str = "seed-indexed"


class ReferenceCollage(Method):
    info = INFO
    settings_cls = ReferenceCollageSettings
    batch_size = 16

    def generate(self, requests: Sequence[GenerationRequest]) -> list["Image.Image"]:
        from PIL import Image

        if self.config.fit not in ("contain", "stretch"):
            from relbench.errors import RelbenchError

            raise RelbenchError(f"--set reference-collage.fit: expected 'contain' or 'stretch', got {self.config.fit!r}")
        images = []
        for request in requests:
            self.check_request(request)
            canvas = Image.new("RGB", (request.width, request.height), tuple(self.config.background))
            for subject in request.subjects:  # later subjects are pasted over earlier ones
                index = request.seed % len(subject.images)
                reference = subject.images[index]
                x0, y0, x1, y1 = subject.box
                left, top = round(x0 * request.width), round(y0 * request.height)
                box_w = max(1, round(x1 * request.width) - left)
                box_h = max(1, round(y1 * request.height) - top)
                if self.config.fit == "stretch":
                    size = (box_w, box_h)
                else:
                    scale = min(box_w / reference.width, box_h / reference.height)
                    size = (max(1, round(reference.width * scale)), max(1, round(reference.height * scale)))
                pasted = reference.resize(size, Image.Resampling.BICUBIC)
                mask = None
                if subject.masks:
                    mask = subject.masks[index].convert("L").resize(size, Image.Resampling.NEAREST)
                offset = (left + (box_w - size[0]) // 2, top + (box_h - size[1]) // 2)
                canvas.paste(pasted, offset, mask)
            images.append(canvas)
        return images
