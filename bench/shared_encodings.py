"""Issue 13: forwards and seconds per image before/after sharing each image's encoding between
questions (judge) and metrics (CLIP), and how far the embedder precisions move the scores.

    .venv/bin/python bench/shared_encodings.py --threads 1          # tiny models, CPU

Three parts, each measured in one run so that the figures are ratios on the same machine:

* judge: per generated image the three yes/no questions of relation_vqa/relation_acc and the four
  CircularEval rotations of relation_mc, as the runner asks them (each metric's questions for the
  whole batch in one call). Before: ``LocalVLMJudge._full_logits`` (one full forward per question,
  the path kept for models that cannot share a prefix); after: ``first_token_logits`` (one prefix
  per image, its memo emptied first). Vision-tower forwards counted by a hook. Two judges: the
  tiny one (images of at most 56 x 56 px: 4 image tokens, so the question dominates) and the same
  model with 448 x 448 px images (256 image tokens, the real model's proportion of image to
  question tokens, ~1.4k to ~40, is closer).
* CLIP: clip_t, clip_i and clip_r of one run context score each batch in turn (references
  already cached, as in a running evaluation). Before: the embedder's memo off
  (``IMAGE_MEMO_SIZE = 0``); after: on. Images through the vision tower counted by a hook.
* precision: each embedding metric built with ``dtype`` tf32 / bfloat16 vs float32 (tiny models
  on this CPU; the GPU differences are not measured here): largest and mean |difference| of the
  scores (x100 cosine points).

Generated images are distinct crops of the demo's photos (``bench/metrics_throughput.py``'s
``demo_samples``). Caches go to a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

from metrics_throughput import demo_samples
from timing import run_with_scratch_caches, timed

CLIP_METRICS = ("clip_t", "clip_i", "clip_r")
PRECISION_METRICS = ("clip_t", "clip_i", "clip_r", "dino", "identity_clip", "identity_dino")


# --------------------------------------------------------------------------------------------
# Judge


def judge_questions(samples: Sequence[Any]) -> tuple[list[tuple[Any, str]], list[tuple[Any, str]]]:
    """(yes/no, choice) questions of the samples, as relation_vqa and relation_mc ask them."""
    from relbench.metrics.functional.judge import rotations
    from relbench.metrics.relation_judge import templates

    yes_no, choice = [], []
    for sample in samples:
        yes_no.append((sample.image, templates.relation_question(sample.subject_nouns, sample.relation_phrase)))
        yes_no.extend((sample.image, templates.presence_question(noun)) for noun in sample.subject_nouns)
        phrases = [sample.relation_phrase, *[r.phrase for r in sample.benchmark.relations.values() if r.phrase != sample.relation_phrase][:3]]
        for rotation in rotations(len(phrases)):
            choice.append((sample.image, templates.choice_question(sample.subject_nouns, [phrases[i] for i in rotation])))
    return yes_no, choice


def judge_row(label: str, max_pixels: int, samples: Sequence[Any], args: argparse.Namespace) -> str:
    import torch

    from relbench.metrics.relation_judge.local import LocalVLMJudge, tiny_vlm
    from relbench.profiles import RunContext

    judge = LocalVLMJudge(RunContext(device=args.device), tiny_vlm(seed=0, max_pixels=max_pixels))
    encoded: list[int] = []
    judge.model.model.visual.register_forward_hook(
        lambda module, a, kwargs, out: encoded.append(int(kwargs["grid_thw"].shape[0])), with_kwargs=True)
    yes_no, choice = judge_questions(samples)

    def ask(logits_of: Callable[[Sequence[Any], Sequence[str]], "torch.Tensor"]) -> "torch.Tensor":
        judge._prefixes.clear()  # every repeat encodes its images again
        with torch.inference_mode():
            return torch.cat([logits_of([i for i, _ in qs], [q for _, q in qs]) for qs in (yes_no, choice)])

    ask(judge.first_token_logits), ask(judge._full_logits)  # warm-up
    counts = {}
    encoded.clear()
    ask(judge._full_logits)
    counts["before"] = sum(encoded) / len(samples)
    encoded.clear()
    ask(judge.first_token_logits)
    counts["after"] = sum(encoded) / len(samples)
    before_s, before = timed(lambda: ask(judge._full_logits), args.repeats)
    after_s, after = timed(lambda: ask(judge.first_token_logits), args.repeats)
    n = len(samples)
    tokens = int(judge.processor.image_processor(images=[samples[0].image], return_tensors="pt")["image_grid_thw"].prod()) // 4
    diff = float((before - after).abs().max())
    return (f"| {label} ({tokens} image tokens) | {counts['before']:g} | {counts['after']:g} | "
            f"{before_s / n * 1000:.1f} | {after_s / n * 1000:.1f} | {before_s / after_s:.2f}x | {diff:.1e} |")


# --------------------------------------------------------------------------------------------
# CLIP


def clip_rows(samples: Sequence[Any], warm: Sequence[Any], args: argparse.Namespace) -> list[str]:
    from relbench.metrics import METRICS
    from relbench.metrics import embedder as embedder_module
    from relbench.profiles import RunContext

    context = RunContext(profile="tiny", device=args.device)
    metrics = [METRICS.get(name)(context) for name in CLIP_METRICS]
    embedder = metrics[0].embedder
    seen: list[int] = []
    embedder.model.vision_model.register_forward_pre_hook(lambda m, a, kwargs: seen.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    memo_size = embedder_module.IMAGE_MEMO_SIZE

    def score(memo: bool) -> list[list[float]]:
        embedder._memo.clear()
        embedder_module.IMAGE_MEMO_SIZE = memo_size if memo else 0
        try:
            values: list[list[float]] = [[] for _ in metrics]
            for start in range(0, len(samples), args.batch_size):
                batch = samples[start : start + args.batch_size]
                for out, metric in zip(values, metrics):
                    out.extend(result.value for result in metric.score(batch))
            return values
        finally:
            embedder_module.IMAGE_MEMO_SIZE = memo_size

    for metric in metrics:
        metric.score(list(warm))  # references and prompts cached, kernels warm
    score(False), score(True)
    counts = {}
    for memo in (False, True):
        seen.clear()
        score(memo)
        counts[memo] = sum(seen) / len(samples)
    before_s, before = timed(lambda: score(False), args.repeats)
    after_s, after = timed(lambda: score(True), args.repeats)
    n = len(samples)
    same = "identical" if before == after else f"max diff {max(abs(a - b) for x, y in zip(before, after) for a, b in zip(x, y)):.1e}"
    return [f"| clip_t + clip_i + clip_r (tiny CLIP) | {counts[False]:g} | {counts[True]:g} | "
            f"{before_s / n * 1000:.2f} | {after_s / n * 1000:.2f} | {before_s / after_s:.2f}x | scores {same} |"]


# --------------------------------------------------------------------------------------------
# Precision


def precision_rows(samples: Sequence[Any], args: argparse.Namespace) -> list[str]:
    from relbench.metrics import METRICS
    from relbench.profiles import RunContext

    rows = []
    for name in PRECISION_METRICS:
        values = {}
        for precision in ("float32", "tf32", "bfloat16"):
            metric = METRICS.get(name)(RunContext(profile="tiny", device=args.device), dtype=precision)
            values[precision] = [result.value for result in metric.score(list(samples))]
        cells = []
        for precision in ("tf32", "bfloat16"):
            diffs = [abs(a - b) for a, b in zip(values[precision], values["float32"])]
            cells.append(f"{max(diffs):.3g} / {statistics.mean(diffs):.3g}")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="generated images (judge: the first 8, one runner batch)")
    parser.add_argument("--size", type=int, default=512, help="side of the generated images, px")
    parser.add_argument("--batch-size", type=int, default=16, help="images per score() call (the runner's SCORE_BATCH)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per mode (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    samples = demo_samples(args.images, args.size, offset=0)
    judged = samples[:8]
    print(f"\n{len(judged)} images of {args.size} px, 3 yes/no questions + 4 rotations each; median of {args.repeats}\n")
    print("| judge | vision forwards per image, before | after | ms per image, before | after | speed-up | max logit diff |")
    print("|---|---|---|---|---|---|---|")
    for label, max_pixels in (("tiny VLM", 56 * 56), ("tiny VLM, 448 px images", 448 * 448)):
        print(judge_row(label, max_pixels, judged, args), flush=True)
    print(f"\n{len(samples)} images of {args.size} px in batches of {args.batch_size}; median of {args.repeats}\n")
    print("| metrics | images through the vision tower per image, before | after | ms per image, before | after | speed-up | |")
    print("|---|---|---|---|---|---|---|")
    for line in clip_rows(samples, demo_samples(8, args.size, offset=10_000), args):
        print(line, flush=True)
    print(f"\nprecision vs float32, {len(samples)} images, tiny models on {args.device}: max / mean |difference| (score points)\n")
    print("| metric | tf32 | bfloat16 |")
    print("|---|---|---|")
    for line in precision_rows(samples, args):
        print(line, flush=True)


if __name__ == "__main__":
    run_with_scratch_caches(main, sys.argv[1:], "relbench-shared-encodings-")
