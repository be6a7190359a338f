"""Images per second per metric, scored in batches vs one image at a time; reference embeddings
computed vs read back from the on-disk cache.

    .venv/bin/python bench/metrics_throughput.py                 # tiny profile, every metric, CPU
    .venv/bin/python bench/metrics_throughput.py --metrics clip_i,dino --images 64
    .venv/bin/python bench/metrics_throughput.py --full-shapes --dtype bfloat16   # on a GPU

Generated images are distinct crops of the scikit-image photos (``--size`` px square), so no
metric can answer from a per-image cache; the subjects and references are the demo benchmark's.
Each metric gets a fresh run context; a warm-up call (two other images) loads the references
first, as in a run, so the figures are the steady state. The identity metrics share one analysis
per run: ``identity (6 metrics)`` scores all six on each batch, as the runner does.

``--full-shapes`` builds the full-profile architectures with random weights (CLIP ViT-L/14,
DINO ViT-S/16, OWLv2 B/16 at 960 px, ViTPose++ B) instead of the tiny ones: the figures that
matter for a real run, on a GPU. The 7B VLM judge is left out there (see its own docs).

The caches this writes (embeddings, judge answers) go to a temporary folder, removed at the end.
Figures depend on the machine: report them with the line it prints first.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDENTITY = ("identity_clip", "identity_dino", "presence", "confusion", "swap", "blend")
IDENTITY_GROUP = "identity (6 metrics)"
JUDGE = ("relation_vqa", "relation_acc", "relation_mc")


# --------------------------------------------------------------------------------------------
# Inputs


def demo_samples(count: int, size: int, offset: int) -> list[Any]:
    """``count`` samples of the demo benchmark's cases with distinct generated images."""
    import numpy as np
    from PIL import Image

    from relbench.benchmarks import load_benchmark
    from relbench.data_root import load_image
    from relbench.metrics.base import ScoringSample

    benchmark = load_benchmark("demo")
    data_root = Path(tempfile.gettempdir())  # the demo's images are bundled: no data root is read
    refs = {sid: tuple(load_image(ref, data_root, benchmark.spec_dir) for ref in s.images) for sid, s in benchmark.subjects.items()}
    photos = [image for images in refs.values() for image in images]
    cases = list(benchmark.cases)
    out = []
    for i in range(offset, offset + count):
        rng = np.random.default_rng(i)
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        image = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
        case = cases[i % len(cases)]
        relation = benchmark.relations[case.relation]
        out.append(ScoringSample(
            case_id=case.id, image=image, prompt=case.prompt, relation_phrase=relation.phrase,
            subject_ids=tuple(case.subjects), subject_nouns=tuple(benchmark.subjects[s].class_noun for s in case.subjects),
            references=tuple(refs[s] for s in case.subjects), relation_id=relation.id, relation_kind=relation.kind.value,
            boxes=tuple(case.boxes), subject_categories=tuple(benchmark.subjects[s].category for s in case.subjects),
            benchmark=benchmark, data_root=data_root,
        ))
    return out


def pose_inputs(samples: Sequence[Any]) -> list[Any]:
    """The demo has no reference poses: two random 17-keypoint people per case, so the estimator runs."""
    import numpy as np

    from relbench.metrics.pose import PoseInputs, PoseReference

    rng = np.random.default_rng(0)
    reference = PoseReference(np.stack([rng.uniform([0.1, 0.2], [0.5, 0.8], (17, 2)), rng.uniform([0.5, 0.2], [0.9, 0.8], (17, 2))]), "coco")
    return [PoseInputs(tuple(s.boxes), (reference,)) for s in samples]


# --------------------------------------------------------------------------------------------
# Metrics, tiny or full-shaped


class FullShapes:
    """Full-profile architectures with random weights (the default hub models' shapes), built on
    first use on the CPU; the metrics move them to the device and dtype."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._built:
            self._built[key] = getattr(self, f"_{key}")()
        return self._built[key]

    @staticmethod
    def _text(width: int, layers: int, heads: int, positions: int) -> dict[str, Any]:
        from relbench.tiny import CLIP_VOCAB_SIZE

        return dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                    num_attention_heads=heads, max_position_embeddings=positions, hidden_act="quick_gelu",
                    bos_token_id=CLIP_VOCAB_SIZE - 2, eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1)

    @staticmethod
    def _vision(size: int, patch: int, width: int, layers: int, heads: int) -> dict[str, Any]:
        return dict(image_size=size, patch_size=patch, hidden_size=width, intermediate_size=4 * width,
                    num_hidden_layers=layers, num_attention_heads=heads, hidden_act="quick_gelu")

    def _clip(self) -> Any:
        """openai/clip-vit-large-patch14: ViT-L/14 at 224 px, 12-layer 768-wide text tower, 768-d projection."""
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        from relbench.tiny import clip_tokenizer

        config = CLIPConfig(text_config=self._text(768, 12, 12, 77), vision_config=self._vision(224, 14, 1024, 24, 16), projection_dim=768)
        return CLIPModel(config).eval(), CLIPImageProcessor(), clip_tokenizer()  # processor defaults: 224 px, bicubic, OpenAI mean/std

    def _dino(self) -> Any:
        """facebook/dino-vits16: ViT-S/16 at 224 px."""
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        config = ViTConfig(image_size=224, patch_size=16, hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
                           num_attention_heads=6, layer_norm_eps=1e-6)
        processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
        return ViTModel(config, add_pooling_layer=False).eval(), processor

    def _detector(self) -> Any:
        """google/owlv2-base-patch16-ensemble: ViT-B/16 at 960 px (3600 boxes), 16-token queries."""
        from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

        from relbench.tiny import clip_tokenizer

        config = Owlv2Config(text_config=self._text(512, 12, 8, 16), vision_config=self._vision(960, 16, 768, 12, 12), projection_dim=512)
        return Owlv2ForObjectDetection(config).eval(), Owlv2ImageProcessor(size={"height": 960, "width": 960}), clip_tokenizer()

    def _pose(self) -> Any:
        return full_shape_vitpose()


def full_shape_vitpose() -> Any:
    """usyd-community/vitpose-plus-base: ViTPose++ B (6 experts) at 256x192, COCO keypoint labels."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    backbone = VitPoseBackboneConfig(image_size=[256, 192], patch_size=[16, 16], hidden_size=768, num_hidden_layers=12,
                                     num_attention_heads=12, intermediate_size=3072, num_experts=6, part_features=192,
                                     out_indices=[12])
    from relbench.keypoints import COCO

    id2label = dict(enumerate(COCO.keypoints))  # the converted checkpoints' labels: COCO's 17 keypoints
    config = VitPoseConfig(backbone_config=backbone, num_labels=len(COCO.keypoints), id2label=id2label,
                           label2id={name: i for i, name in id2label.items()})
    return VitPoseForPoseEstimation(config).eval(), VitPoseImageProcessor()


def build(name: str, context: Any, models: FullShapes | None, dtype: str) -> Callable[[Sequence[Any]], Any]:
    """A scoring function for ``name`` (or the identity group) in a fresh context."""
    from relbench.metrics import METRICS

    if name == IDENTITY_GROUP:
        from relbench.metrics.identity.metric import IdentityAnalyzer, IdentitySettings

        if models is None:
            metrics = [METRICS.get(n)(context) for n in IDENTITY]
        else:
            from relbench.metrics.clip import CLIPEmbedder

            analyzer = IdentityAnalyzer(context, IdentitySettings(dtype=dtype), detector=models["detector"],
                                        clip=CLIPEmbedder(context, models["clip"], dtype=dtype), dino=models["dino"])
            metrics = [METRICS.get(n)(context, analyzer=analyzer) for n in IDENTITY]
        return lambda samples: [m.score(samples) for m in metrics]
    cls = METRICS.get(name)
    if name == "pose":
        metric = cls(context, None if models is None else models["pose"], dtype=dtype)
        return lambda samples: metric.score(samples, pose_inputs(samples))
    if name in IDENTITY:
        metric = cls(context) if models is None else None
        if metric is None:
            raise SystemExit(f"{name}: use --metrics '{IDENTITY_GROUP}' with --full-shapes")
        return metric.score
    if name in JUDGE:  # the judge's dtype follows the device (see relation_judge.local)
        return cls(context).score
    model = None if models is None else models[cls.model_key]
    return cls(context, model, dtype=dtype).score


# --------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Row:
    name: str
    load_s: float
    batched: float  # images per second
    single: float


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        torch.cuda.synchronize()


def measure(name: str, args: argparse.Namespace, models: FullShapes | None) -> Row:
    from relbench.profiles import RunContext

    context = RunContext(profile="full" if args.full_shapes else "tiny", device=args.device)
    began = time.perf_counter()
    score = build(name, context, models, args.dtype)
    load_s = time.perf_counter() - began
    score(demo_samples(2, args.size, offset=10_000))  # warm-up: references, kernels, allocator
    batched_samples = demo_samples(args.images, args.size, offset=0)
    single_samples = demo_samples(args.images, args.size, offset=args.images)
    sync(args.device)
    began = time.perf_counter()
    for start in range(0, len(batched_samples), args.batch_size):
        score(batched_samples[start : start + args.batch_size])
    sync(args.device)
    batched = len(batched_samples) / (time.perf_counter() - began)
    began = time.perf_counter()
    for sample in single_samples:
        score([sample])
    sync(args.device)
    single = len(single_samples) / (time.perf_counter() - began)
    return Row(name, load_s, batched, single)


def reference_cache_figures(args: argparse.Namespace) -> list[str]:
    """Per reference: embedding it vs reading it back from disk in a new context (tiny models;
    full-shaped random models have no stable identity, so they are not cached on disk)."""
    from relbench.metrics.clip import CLIPIScore
    from relbench.metrics.dino import DINOScore
    from relbench.profiles import RunContext

    samples = demo_samples(args.images, args.size, offset=0)
    os.environ["RELBENCH_EMBEDDING_CACHE"] = tempfile.mkdtemp(prefix="references-", dir=os.environ.get("XDG_CACHE_HOME"))
    lines = []
    for cls in (CLIPIScore, DINOScore):
        times, counts = [], []
        for _ in range(2):  # cold (empty cache), then a new context reading the files
            metric = cls(RunContext(profile="tiny", device=args.device))
            # Copies: new objects, as in a new process, so the pixel digests are computed again.
            unique = [image.copy() for image in {id(image): image for s in samples for refs in s.references for image in refs}.values()]
            began = time.perf_counter()
            metric.embed_references(unique, [_digest(image) for image in unique])
            times.append(time.perf_counter() - began)
            counts.append((metric.embedder.references.computed, metric.embedder.references.from_disk))
        n = len(unique)
        lines.append(f"{cls.name}: {n} references: embedded {times[0] / n * 1000:.2f} ms each "
                     f"(computed {counts[0][0]}); new process-like context {times[1] / n * 1000:.2f} ms each "
                     f"(computed {counts[1][0]}, read from disk {counts[1][1]})")
    return lines


def rate(value: float) -> str:
    """Three significant figures: 0.0213, 4.57, 1234."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def _digest(image: Any) -> str:
    from relbench.metrics.embedding_cache import image_digest

    return image_digest(image)


def main(argv: list[str] | None = None) -> None:
    from relbench.metrics import METRICS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per mode (batched, one at a time)")
    parser.add_argument("--size", type=int, default=512, help="side of the generated images, px")
    parser.add_argument("--batch-size", type=int, default=16, help="images per score() call when batched (the runner's SCORE_BATCH)")
    parser.add_argument("--metrics", default="", help=f"comma-separated; default every metric, the identity ones as {IDENTITY_GROUP!r}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--full-shapes", action="store_true", help="full-size architectures with random weights (for a GPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is steadier on a machine shared with other jobs")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    if not names:
        names = [n for n in METRICS.names() if n not in IDENTITY[1:]]
        names[names.index(IDENTITY[0])] = IDENTITY_GROUP
        if args.full_shapes:
            names = [n for n in names if n not in JUDGE]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device} ({gpu}), "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"profile: {'full shapes, random weights' if args.full_shapes else 'tiny'}, dtype {args.dtype}, "
          f"{args.images} images of {args.size}x{args.size} per mode, batches of {args.batch_size}")

    models = FullShapes() if args.full_shapes else None
    rows = []
    header = f"{'metric':<22} {'load s':>7} {'batched img/s':>14} {'one at a time img/s':>20} {'speed-up':>9}"
    print(header)
    for name in names:
        row = measure(name, args, models)
        rows.append(row)
        print(f"{row.name:<22} {row.load_s:>7.2f} {rate(row.batched):>14} {rate(row.single):>20} {row.batched / row.single:>8.2f}x", flush=True)
    if not args.full_shapes:
        for line in reference_cache_figures(args):
            print(line)
    speedups = [r.batched / r.single for r in rows]
    if speedups:
        print(f"median batched speed-up: {statistics.median(speedups):.2f}x over {len(rows)} entries")


if __name__ == "__main__":
    from timing import run_with_scratch_caches

    run_with_scratch_caches(main, sys.argv[1:], "relbench-throughput-")
