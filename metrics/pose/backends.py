"""Pose estimators behind one interface: given images and one box per subject, keypoints per box.

All backends here are top-down: they find one pose inside each box. The boxes come from the
metric (the case's layout boxes, see ``relbench.metrics.pose.metric``).

* ``vitpose`` (default): transformers' ``VitPoseForPoseEstimation`` with ``VitPoseImageProcessor``
  (boxes in COCO xywh pixels; the processor crops each box, padded x1.25, to the model's input size
  and maps the heatmap peaks back). ViTPose++ checkpoints (``usyd-community/vitpose-plus-*``, a
  mixture of experts in the backbone) take a ``dataset_index`` choosing the experts: 0 COCO,
  1 AiC, 2 MPII, 3 AP-10K, 4 APT-36K, 5 COCO-WholeBody. The keypoint order is read from the
  checkpoint's ``config.id2label``. Caveat (transformers' conversion script): the converted
  ViTPose++ checkpoints keep only the COCO decoder head (the other datasets' heads were dropped), so
  with ``dataset_index=3`` the AP-10K experts' features are decoded by the COCO head into the 17
  COCO keypoints; the metric maps those onto AP-10K's body parts.
  Tiny profile: ``tiny_vitpose`` builds a ViTPose++-shaped model (6 experts, 64x48 input) with
  random weights, seeded.
* ``mediapipe`` (optional, ``pip install 'relbench[mediapipe]'``): BlazePose full
  (``model_complexity=1``, bundled in the mediapipe 0.10.14 wheel, so it runs offline), one person
  per call; each box, padded x1.25 like ViTPose's, is cropped and given to it. Its 33 landmarks are
  reduced to the 17 COCO keypoints by name; the landmark visibility is the score. Humans only.
* ``mmpose`` (optional): an mmpose 1.x top-down model from a config file and checkpoint, only where
  mmpose is installed (it needs mmcv built from source).
"""

from __future__ import annotations

import importlib.util
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from relbench.errors import RelbenchError
from relbench.keypoints import COCO, SKELETONS, skeleton_of_labels
from relbench.metrics.loading import batched, built_model_name, load_component, load_pretrained, model_source, resolve_revision
from relbench.profiles import FULL_MODELS, ModelRef, RunContext, resolved_revision, torch_dtype

if TYPE_CHECKING:
    from PIL import Image

BACKENDS = ("vitpose", "mediapipe", "mmpose")
DEFAULT_POSE_MODEL = ModelRef("pose", "usyd-community/vitpose-plus-base", "main")
# ViTPose++'s expert per training dataset (the order of the original ViTPose++ multi-task configs).
VITPOSE_PLUS_DATASETS = {"coco": 0, "aic": 1, "mpii": 2, "ap10k": 3, "apt36k": 4, "coco_wholebody": 5}
BOX_PADDING = 1.25  # the crop margin top-down estimators are trained with (ViTPose's padding_factor)
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class PoseEstimate:
    """The poses found in one image, one per box, in box order."""

    keypoints: np.ndarray  # (S, K, 2) float64 pixel (x, y) in the image; NaN where nothing was found
    scores: np.ndarray  # (S, K) float64 confidence in [0, 1] (0 where nothing was found)


class PoseBackend(ABC):
    """A top-down pose estimator. ``skeleton`` names the keypoint order of its output."""

    name: ClassVar[str]
    skeleton: str
    uses_dataset_index: bool = False

    @abstractmethod
    def estimate(
        self, images: Sequence["Image.Image"], boxes: Sequence[np.ndarray], dataset_index: int | None = None
    ) -> list[PoseEstimate]:
        """One estimate per image; ``boxes[i]``: (S_i, 4) COCO xywh pixel boxes of image i."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Backend, model id, revision, input size: what moves the keypoints."""


def _check_boxes(images: Sequence["Image.Image"], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box sets")
    out = []
    for image_boxes in boxes:
        array = np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4)
        if array.shape[0] == 0:
            raise ValueError("every image needs at least one box")
        out.append(array)
    return out


_INSTALL_HINTS = {
    "mediapipe": "pip install 'relbench[mediapipe]' (mediapipe==0.10.14, which bundles BlazePose)",
    "mmpose": "install mmpose 1.x with mmcv>=2 built from source (see mmpose's installation guide)",
}


def require_package(name: str) -> None:
    """A one-line error, with how to install it, when an optional backend's package is missing."""
    if importlib.util.find_spec(name) is None:
        raise RelbenchError(
            f"pose backend {name!r}: {name} is not installed; {_INSTALL_HINTS[name]}, or use the default vitpose backend"
        )


def padded_box(box: np.ndarray, width: int, height: int, padding: float = BOX_PADDING) -> tuple[int, int, int, int]:
    """A COCO xywh box grown by ``padding`` about its centre, clipped to the image: (x0, y0, x1, y1)."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2.0, y + h / 2.0
    half_w, half_h = w * padding / 2.0, h * padding / 2.0
    x0, y0 = max(0, int(np.floor(cx - half_w))), max(0, int(np.floor(cy - half_h)))
    x1, y1 = min(width, int(np.ceil(cx + half_w))), min(height, int(np.ceil(cy + half_h)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


# --------------------------------------------------------------------------------------------
# transformers ViTPose / ViTPose++


def tiny_vitpose(seed: int = 0, *, num_experts: int = 6) -> tuple[Any, Any]:
    """(VitPoseForPoseEstimation, VitPoseImageProcessor) with random weights: ViTPose++-shaped
    (``num_experts`` experts, so ``dataset_index`` is used), 2 layers 32 wide, 64x48 input,
    COCO keypoint labels like the converted checkpoints."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    from relbench.tiny import seeded

    backbone = VitPoseBackboneConfig(
        image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        mlp_ratio=2, num_experts=num_experts, part_features=8 if num_experts > 1 else 0, out_indices=[2],
    )
    id2label = {i: name for i, name in enumerate(COCO.keypoints)}
    config = VitPoseConfig(
        backbone_config=backbone, num_labels=len(COCO.keypoints), id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    with seeded(seed):
        model = VitPoseForPoseEstimation(config).eval()
    processor = VitPoseImageProcessor(size={"height": 64, "width": 48})
    return model, processor


class VitPoseBackend(PoseBackend):
    name: ClassVar[str] = "vitpose"

    def __init__(self, context: RunContext, model: Any = None, *, dtype: str = "float32", batch_size: int = DEFAULT_BATCH_SIZE):
        import transformers

        torch_dtype_ = torch_dtype(dtype)  # refuse a bad dtype before loading anything
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = context.torch_device()
        self.seed: int | None = None
        self.requested_revision: str | None = None
        self.transformers_version = transformers.__version__
        if model is not None:
            if not isinstance(model, (tuple, list)) or len(model) != 2:
                raise TypeError("a built ViTPose model is passed as (VitPoseForPoseEstimation, VitPoseImageProcessor)")
            self.model, self.processor = model
            self.model_id = built_model_name(self.model)
            self.revision = resolve_revision(self.model, None, None) or resolved_revision(self.model_id)
        else:
            ref = pose_model_ref(context)
            if ref.is_tiny:
                self.model, self.processor = tiny_vitpose(seed=context.seed)
                self.seed = context.seed
                self.revision = None
            else:
                from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

                source = model_source(ref)
                self.model = load_pretrained(VitPoseForPoseEstimation, ref, source)
                self.processor = load_component(VitPoseImageProcessor, ref, source)
                self.revision = resolve_revision(self.model, source, ref.revision)
            self.model_id = ref.id
            self.requested_revision = ref.revision
        where = f"pose model {self.model_id!r}"
        labels = [self.model.config.id2label[i] for i in range(len(self.model.config.id2label))]
        skeleton = skeleton_of_labels(labels)
        if skeleton is None:
            raise RelbenchError(
                f"{where}: its keypoint labels (config.id2label: {', '.join(labels[:4])}, ...) match no known skeleton "
                f"({', '.join(SKELETONS)}); is it a COCO or AP-10K keypoint checkpoint?"
            )
        self.skeleton = skeleton
        backbone = self.model.config.backbone_config
        self.input_size = (int(backbone.image_size[0]), int(backbone.image_size[1]))  # (height, width)
        size = getattr(self.processor, "size", None) or {}
        processor_size = (int(size.get("height", 0)), int(size.get("width", 0)))
        # The processor maps heatmaps back to the image with its own size: it must be the model's.
        if processor_size != self.input_size:
            raise RelbenchError(
                f"{where}: the image processor crops to {processor_size[0]}x{processor_size[1]} but the model expects "
                f"{self.input_size[0]}x{self.input_size[1]}; check preprocessor_config.json (size)"
            )
        self.num_experts = int(getattr(backbone, "num_experts", 1))
        self.uses_dataset_index = self.num_experts > 1
        self.model.to(device=self.device, dtype=torch_dtype_)

    def estimate(
        self, images: Sequence["Image.Image"], boxes: Sequence[np.ndarray], dataset_index: int | None = None
    ) -> list[PoseEstimate]:
        import torch

        boxes_ = _check_boxes(images, boxes)
        if self.uses_dataset_index and dataset_index is None:
            raise ValueError(f"pose model {self.model_id!r} is a mixture of experts: pass dataset_index")
        if self.uses_dataset_index and not 0 <= dataset_index < self.num_experts:  # type: ignore[operator]
            raise RelbenchError(f"pose.dataset_index: {dataset_index} is not an expert of {self.model_id!r} (0..{self.num_experts - 1})")
        estimates: list[PoseEstimate] = []
        with torch.inference_mode():
            for index_batch in batched(list(range(len(images))), self.batch_size):
                batch_images = [images[i].convert("RGB") for i in index_batch]
                batch_boxes = [boxes_[i].tolist() for i in index_batch]
                inputs = self.processor(images=batch_images, boxes=batch_boxes, return_tensors="pt")
                pixels = inputs["pixel_values"].to(device=self.device, dtype=self.model.dtype)
                kwargs: dict[str, Any] = {}
                if self.uses_dataset_index:
                    kwargs["dataset_index"] = torch.full((pixels.shape[0],), int(dataset_index), device=self.device)  # type: ignore[arg-type]
                outputs = self.model(pixel_values=pixels, **kwargs)
                outputs.heatmaps = outputs.heatmaps.float().cpu()
                results = self.processor.post_process_pose_estimation(outputs, boxes=batch_boxes)
                for per_image in results:
                    keypoints = np.stack([r["keypoints"].numpy().astype(np.float64) for r in per_image])
                    scores = np.stack([r["scores"].numpy().astype(np.float64).reshape(-1) for r in per_image])
                    estimates.append(PoseEstimate(keypoints, np.clip(scores, 0.0, 1.0)))
        return estimates

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "backend": self.name,
            "model": self.model_id,
            "model_class": "transformers.VitPoseForPoseEstimation",
            "requested_revision": self.requested_revision,
            "revision": self.revision,
            "skeleton": self.skeleton,
            "num_experts": self.num_experts,
            "input_resolution": list(self.input_size),
            "preprocessing": f"transformers {self.transformers_version} VitPoseImageProcessor: affine crop of each box "
                             "padded x1.25 to the input size, ImageNet mean/std; heatmap peaks with DARK refinement",
            "dtype": self.dtype,
        }
        if self.seed is not None:
            settings["seed"] = self.seed
        return settings


def pose_model_ref(context: RunContext) -> ModelRef:
    """``context.model("pose")``, with ViTPose++ base as the full profile's default."""
    if context.is_tiny or "pose" in context.model_overrides or "pose" in FULL_MODELS:
        return context.model("pose")
    return DEFAULT_POSE_MODEL  # until relbench.profiles.FULL_MODELS has a "pose" entry


# --------------------------------------------------------------------------------------------
# mediapipe BlazePose


# The BlazePose landmark (mediapipe's PoseLandmark name) at each COCO keypoint, in COCO order.
BLAZEPOSE_FOR_COCO = (
    "NOSE", "LEFT_EYE", "RIGHT_EYE", "LEFT_EAR", "RIGHT_EAR", "LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW",
    "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_HIP", "RIGHT_HIP", "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE",
    "RIGHT_ANKLE",
)


class MediaPipeBackend(PoseBackend):
    name: ClassVar[str] = "mediapipe"
    skeleton = "coco"
    MODEL_COMPLEXITY: ClassVar[int] = 1  # the only BlazePose model the wheel bundles (0 and 2 download)

    def __init__(self, *, min_detection_confidence: float = 0.5):
        require_package("mediapipe")
        import mediapipe as mp

        self.version = mp.__version__
        self.min_detection_confidence = min_detection_confidence
        self.landmark_index = np.array([mp.solutions.pose.PoseLandmark[name].value for name in BLAZEPOSE_FOR_COCO])
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=self.MODEL_COMPLEXITY,
            min_detection_confidence=min_detection_confidence,
        )
        weakref.finalize(self, self._pose.close)

    def estimate(
        self, images: Sequence["Image.Image"], boxes: Sequence[np.ndarray], dataset_index: int | None = None
    ) -> list[PoseEstimate]:
        boxes_ = _check_boxes(images, boxes)
        estimates = []
        for image, image_boxes in zip(images, boxes_):
            pixels = np.asarray(image.convert("RGB"))
            height, width = pixels.shape[:2]
            keypoints = np.full((len(image_boxes), len(COCO.keypoints), 2), np.nan)
            scores = np.zeros((len(image_boxes), len(COCO.keypoints)))
            for s, box in enumerate(image_boxes):
                x0, y0, x1, y1 = padded_box(box, width, height)
                result = self._pose.process(np.ascontiguousarray(pixels[y0:y1, x0:x1]))
                if result.pose_landmarks is None:
                    continue  # nobody found in this box: all keypoints missing
                found = [result.pose_landmarks.landmark[i] for i in self.landmark_index]
                # Landmarks are normalised to the crop (and may lie outside it).
                keypoints[s] = [(x0 + p.x * (x1 - x0), y0 + p.y * (y1 - y0)) for p in found]
                scores[s] = [p.visibility for p in found]
            estimates.append(PoseEstimate(keypoints, np.clip(scores, 0.0, 1.0)))
        return estimates

    def settings(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": f"mediapipe {self.version} BlazePose full (pose_landmark_full, model_complexity={self.MODEL_COMPLEXITY})",
            "skeleton": self.skeleton,
            "landmarks": "33 BlazePose landmarks reduced to the 17 COCO keypoints by name; score = landmark visibility",
            "static_image_mode": True,
            "min_detection_confidence": self.min_detection_confidence,
            "crop": f"each box padded x{BOX_PADDING}, clipped to the image",
        }


# --------------------------------------------------------------------------------------------
# mmpose (optional)


class MMPoseBackend(PoseBackend):
    """An mmpose 1.x top-down model: ``config`` (file or model-zoo name) and ``checkpoint``."""

    name: ClassVar[str] = "mmpose"

    def __init__(self, context: RunContext, config: str, checkpoint: str | None = None):
        require_package("mmpose")
        from mmpose.apis import init_model

        self.config = config
        self.checkpoint = checkpoint
        try:
            self.model = init_model(config, checkpoint, device=str(context.torch_device()))
        except Exception as exc:  # a user-named config or checkpoint that does not load
            raise RelbenchError(f"pose backend 'mmpose': cannot load {config!r} / {checkpoint!r}: {type(exc).__name__}: {exc}") from exc
        dataset = str((getattr(self.model, "dataset_meta", None) or {}).get("dataset_name", "")).replace("-", "").lower()
        if dataset not in SKELETONS:
            raise RelbenchError(
                f"pose backend 'mmpose': model {config!r} is trained on {dataset or 'an unknown dataset'!r}; "
                f"expected one of {', '.join(SKELETONS)}"
            )
        self.skeleton = dataset

    def estimate(
        self, images: Sequence["Image.Image"], boxes: Sequence[np.ndarray], dataset_index: int | None = None
    ) -> list[PoseEstimate]:
        from mmpose.apis import inference_topdown

        estimates = []
        for image, image_boxes in zip(images, _check_boxes(images, boxes)):
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # mmpose reads images as BGR
            results = inference_topdown(self.model, bgr, bboxes=image_boxes, bbox_format="xywh")
            keypoints = np.stack([np.asarray(r.pred_instances.keypoints, dtype=np.float64)[0] for r in results])
            scores = np.stack([np.asarray(r.pred_instances.keypoint_scores, dtype=np.float64)[0] for r in results])
            estimates.append(PoseEstimate(keypoints, np.clip(scores, 0.0, 1.0)))
        return estimates

    def settings(self) -> dict[str, Any]:
        import mmpose

        return {"backend": self.name, "model": self.config, "checkpoint": self.checkpoint,
                "mmpose_version": mmpose.__version__, "skeleton": self.skeleton}


def build_backend(
    name: str,
    context: RunContext,
    model: Any = None,
    *,
    dtype: str = "float32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    mmpose_checkpoint: str | None = None,
) -> PoseBackend:
    """The backend called ``name``; ``model``: a built ViTPose pair, or an mmpose config."""
    if name == "vitpose":
        return VitPoseBackend(context, model, dtype=dtype, batch_size=batch_size)
    if name == "mediapipe":
        return MediaPipeBackend()
    if name == "mmpose":
        require_package("mmpose")
        config = model if isinstance(model, str) else context.model_overrides.get("pose")
        if not config:
            raise RelbenchError("pose backend 'mmpose': name its config with --model pose=CONFIG.py")
        return MMPoseBackend(context, config, mmpose_checkpoint)
    raise RelbenchError(f"pose.backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
