"""Image preprocessing for embedding metrics, done by relbench from the model's processor config.

Why not call the transformers image processor object: its implementation changes under the same
config (transformers 5 made ``CLIPImageProcessor`` a torchvision tensor pipeline; 4.x resized with
PIL), so the pixels, and the scores, would depend on the installed version. Measured with
transformers 5.24 on the scikit-image photos at 224 px: at most 1 grey level apart, mean < 0.01.
The original CLIP, DINO and DreamBench evaluation code resize PIL images, so relbench reads the
numbers from the processor config (size, crop, filter, mean, std) and applies them with PIL here:
the same pixels whatever transformers version is installed.

Conventions (those of torchvision's ``Resize(int)`` / ``CenterCrop`` on PIL images):
* ``shortest_edge`` resize: the short side becomes ``n``, the long side ``int(n * long / short)``;
* center crop offsets ``round((size - crop) / 2)``;
* then ``x * rescale_factor``, ``(x - mean) / std`` in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from relbench.errors import RelbenchError

if TYPE_CHECKING:
    from PIL import Image

_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize, center crop, rescale and normalise PIL images into a (N, 3, H, W) float32 tensor."""

    shortest_edge: int | None = None  # resize the short side to this (aspect kept) ...
    resize_to: tuple[int, int] | None = None  # ... or resize to exactly (height, width)
    resample: int = 3  # PIL filter id: 2 bilinear, 3 bicubic
    crop: tuple[int, int] | None = None  # center crop (height, width) after the resize
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, when fixed by the config."""
        if self.crop is not None:
            return self.crop
        return self.resize_to

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for result files."""
        resize: dict[str, Any] | None = None
        if self.shortest_edge is not None:
            resize = {"shortest_edge": self.shortest_edge}
        elif self.resize_to is not None:
            resize = {"height": self.resize_to[0], "width": self.resize_to[1]}
        return {
            "implementation": "relbench PIL (torchvision Resize/CenterCrop conventions)",
            "resize": resize,
            "resample": _RESAMPLE_NAMES.get(self.resample, str(self.resample)),
            "center_crop": list(self.crop) if self.crop else None,
            "rescale_factor": self.rescale_factor,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def __call__(self, images: Sequence["Image.Image"]) -> torch.Tensor:
        arrays = [self._one(image) for image in images]
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, 0, 0)

    def _one(self, image: "Image.Image") -> np.ndarray:
        from PIL import Image

        image = image.convert("RGB")
        if self.shortest_edge is not None:
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
            if size != image.size:
                image = image.resize(size, Image.Resampling(self.resample))
        elif self.resize_to is not None:
            height, width = self.resize_to
            if (width, height) != image.size:
                image = image.resize((width, height), Image.Resampling(self.resample))
        if self.crop is not None:
            crop_h, crop_w = self.crop
            width, height = image.size
            if crop_h > height or crop_w > width:
                raise RelbenchError(
                    f"image preprocessing: center crop {crop_h}x{crop_w} is larger than the resized image {height}x{width}; "
                    "check the model's preprocessor_config.json (size / crop_size)"
                )
            top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
            image = image.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(image, dtype=np.float32) * np.float32(self.rescale_factor)
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_from_processor(processor: Any, where: str) -> ImagePreprocess:
    """Read resize / crop / normalisation settings from a transformers image processor.

    ``where`` names the model in error messages. Only the fields of CLIP and ViT processors are
    understood; anything else that would change the pixels is refused rather than ignored.
    """
    config: dict[str, Any] = processor.to_dict()
    for flag in ("do_pad", "do_reduce_labels"):
        if config.get(flag):
            raise RelbenchError(f"{where}: preprocessor config sets {flag}=true, which relbench's CLIP/DINO preprocessing does not support")

    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None
    if config.get("do_resize", True):
        size = config.get("size")
        if isinstance(size, int):  # legacy configs: an int means the short side (CLIP) or a square (ViT)
            if config.get("default_to_square", getattr(processor, "default_to_square", True)):
                resize_to = (size, size)
            else:
                shortest_edge = size
        elif isinstance(size, dict) and size.get("shortest_edge") and not size.get("longest_edge"):
            shortest_edge = int(size["shortest_edge"])
        elif isinstance(size, dict) and size.get("height") and size.get("width"):
            resize_to = (int(size["height"]), int(size["width"]))
        else:
            raise RelbenchError(f"{where}: preprocessor config size {size!r}: expected {{'shortest_edge': N}} or {{'height': H, 'width': W}}")

    crop: tuple[int, int] | None = None
    if config.get("do_center_crop", False):
        crop_size = config.get("crop_size")
        if isinstance(crop_size, int):
            crop = (crop_size, crop_size)
        elif isinstance(crop_size, dict) and crop_size.get("height") and crop_size.get("width"):
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        else:
            raise RelbenchError(f"{where}: preprocessor config crop_size {crop_size!r}: expected {{'height': H, 'width': W}}")

    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if config.get("do_normalize", True):
        mean = _three(config.get("image_mean"), where, "image_mean")
        std = _three(config.get("image_std"), where, "image_std")
    return ImagePreprocess(
        shortest_edge=shortest_edge,
        resize_to=resize_to,
        resample=int(config.get("resample", 3)),
        crop=crop,
        rescale_factor=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
        mean=mean,
        std=std,
    )


def _three(value: Any, where: str, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3  # type: ignore[return-value]
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return (float(value[0]), float(value[1]), float(value[2]))
    raise RelbenchError(f"{where}: preprocessor config {name} {value!r}: expected three numbers (R, G, B)")
