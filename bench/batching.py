"""Issue 13 parts 3-4 before/after, in one run each on the tiny profile (CPU):

    OMP_NUM_THREADS=1 python bench/batching.py [--seeds 0,1] [--methods ip-adapter,dreambooth-lora,custom-diffusion]

* ip-adapter: the demo's 4 cases x the seeds, in the runner's batches of 4 (case-major). "before" is
  the old grouping's pipeline calls: one per case and reference choice (the seeds of a case that show
  the same references; on RelationBench, whose subjects have several references, one per image);
  "after" one call per batch, cases mixed.
* dreambooth-lora / custom-diffusion: the demo's 4 subject sets, 2 cases each (the second a copy of
  the first under another id, listed after all first ones, as a benchmark lists a pair's cases under
  different relations) x the seeds. "before": the old path (each subject set trained on first need in
  generate(), each training loading its own SDXL, batches in case-major order); "after": train every
  set first on the method's resident SDXL (train_ahead), then the batches in batch_order. Counts:
  SDXL loads, trainings, pipeline calls (UNet forwards / steps), seconds for the whole.
* custom-diffusion's per-step host work (augmentation + tokenization of one micro-batch) at
  --resolution px: what the training thread no longer does per step (it runs on the Prefetcher's
  worker thread).

Times are CPU seconds on a machine shared with other jobs: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default="ip-adapter,dreambooth-lora,custom-diffusion")
    parser.add_argument("--resolution", type=int, default=1024, help="size of the per-step host work measured for custom-diffusion")
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    import torch

    print(f"tiny profile, 64 px, seeds {seeds}, torch threads {torch.get_num_threads()}")
    for name in args.methods.split(","):
        if name == "ip-adapter":
            bench_ip_adapter(seeds)
        else:
            bench_finetuned(name, seeds)
    if "custom-diffusion" in args.methods:
        bench_augmentation(args.resolution)


def demo_requests(seeds: tuple[int, ...], copies: int = 1) -> list[Any]:
    from relbench.benchmarks import load_benchmark
    from relbench.data_root import resolve_data_root
    from relbench.runner import SubjectInputs

    bench = load_benchmark("demo")
    inputs = SubjectInputs(bench, resolve_data_root())
    out = []
    for copy in range(copies):  # copy k of every case after all copies k-1: a pair's cases apart, as in a benchmark
        for case in bench.cases:
            for seed in seeds:
                request = inputs.request(case, seed, 64, 64)
                out.append(dataclasses.replace(request, case_id=f"{case.id}-{copy}") if copy else request)
    return out


def count_forwards(pipe: Any) -> list[int]:
    calls: list[int] = []
    pipe.unet.register_forward_pre_hook(lambda module, a: calls.append(1))
    return calls


def in_batches(method: Any, requests: list[Any]) -> list[Any]:
    images = []
    for start in range(0, len(requests), method.batch_size):
        images += method.generate(requests[start : start + method.batch_size])
    return images


def bench_ip_adapter(seeds: tuple[int, ...], repeats: int = 5) -> None:
    from timing import timed

    from relbench.methods.ip_adapter.method import IPAdapter
    from relbench.profiles import RunContext

    method = IPAdapter(RunContext(profile="tiny"))
    requests = demo_requests(seeds)
    steps = method.config.num_inference_steps
    method.generate(requests[:1])  # warm-up
    calls = count_forwards(method.pipe)

    def old_groups(batch: list[Any]) -> list[list[Any]]:
        groups: dict[Any, list[Any]] = {}
        for r in batch:
            groups.setdefault((r.case_id, tuple(r.seed % len(s.images) for s in r.subjects)), []).append(r)
        return list(groups.values())

    rows = []
    for label, calls_of in (("before: one call per case and reference choice", old_groups),
                            ("before: one call per image (RelationBench)", lambda batch: [[r] for r in batch]),
                            ("after: one call per batch, cases mixed", lambda batch: [batch])):
        def run() -> None:
            for start in range(0, len(requests), method.batch_size):
                for group in calls_of(requests[start : start + method.batch_size]):
                    method.generate(group)

        del calls[:]
        seconds, _ = timed(run, repeats)
        rows.append((label, len(calls) // (steps * repeats), 1000 * seconds / len(requests)))
    print(f"\nip-adapter: {len(requests)} images, batches of {method.batch_size}, {steps} steps, median of {repeats} runs")
    print("| path | pipeline calls | ms per image | vs after |")
    print("|---|---|---|---|")
    for label, n, ms in rows:
        print(f"| {label} | {n} | {ms:.1f} | {ms / rows[-1][2]:.2f}x |")


def bench_finetuned(name: str, seeds: tuple[int, ...]) -> None:
    import importlib

    from relbench.methods import finetune_common as common
    from relbench.profiles import RunContext

    module = {"dreambooth-lora": "relbench.methods.dreambooth_lora.method:DreamBoothLoRA",
              "custom-diffusion": "relbench.methods.custom_diffusion.method:CustomDiffusion"}[name]
    path, _, attr = module.partition(":")
    cls = getattr(importlib.import_module(path), attr)
    requests = demo_requests(seeds, copies=2)
    sets = len({tuple(sorted(s.id for s in r.subjects)) for r in requests})
    loads: list[int] = []
    real_load = common.load_sdxl_parts
    common.load_sdxl_parts = lambda *a, **k: loads.append(1) or real_load(*a, **k)
    trainer = importlib.import_module(str(cls.info.trainer))
    trainings: list[int] = []
    real_main = trainer.main
    trainer.main = lambda argv, **k: trainings.append(1) or real_main(argv, **k)
    rows = []
    try:
        for label, after in (("before: train on first need, own SDXL per training, case-major batches", False),
                             ("after: train ahead on the resident SDXL, batch_order", True)):
            with tempfile.TemporaryDirectory(prefix="relbench-bench-") as cache:
                os.environ["RELBENCH_TRAINED_CACHE"] = cache
                del loads[:], trainings[:]
                began = time.perf_counter()
                method = cls(RunContext(profile="tiny"))
                calls = count_forwards(method.pipe)
                if after:
                    method.train_ahead(requests)
                    ordered = [requests[i] for i in method.batch_order(requests)]
                else:
                    method.lends_sdxl = lambda: False  # type: ignore[method-assign]
                    ordered = requests
                trained_at = time.perf_counter()
                del calls[:]  # the resident UNet's training forwards: sampling is counted from here
                in_batches(method, ordered)
                done = time.perf_counter()
                sampling = len(calls) // method.config.num_inference_steps
                rows.append((label, len(loads), len(trainings), sampling, done - began, trained_at - began))
    finally:
        common.load_sdxl_parts = real_load
        trainer.main = real_main
    print(f"\n{name}: {len(requests)} images over {sets} subject sets (2 cases each), batches of 4")
    print("| path | SDXL loads | trainings | pipeline calls | s in all | vs after |")
    print("|---|---|---|---|---|---|")
    for label, n_loads, n_train, n_calls, seconds, _ in rows:
        print(f"| {label} | {n_loads} | {n_train} | {n_calls} | {seconds:.2f} | {seconds / rows[-1][4]:.2f}x |")


def bench_augmentation(resolution: int) -> None:
    import random

    from PIL import Image

    from relbench.methods.custom_diffusion.train import augment
    from relbench.methods.finetune_common import tokenize
    from relbench.tiny import clip_tokenizer

    from skimage import data

    image = Image.fromarray(data.chelsea()).convert("RGB").resize((resolution + resolution // 4, resolution))
    tokenizer = clip_tokenizer()
    rng = random.Random(0)
    repeats = 20
    began = time.perf_counter()
    for _ in range(repeats):
        augment(image, resolution, 8, rng, True, True)
        tokenize(tokenizer, ["photo of a <new1> cat"] * 2)
        tokenize(tokenizer, ["photo of a <new1> cat"] * 2)
    ms = 1000 * (time.perf_counter() - began) / repeats
    print(f"\ncustom-diffusion host work per micro-batch of 1 at {resolution} px (augment + both tokenizations): "
          f"{ms:.1f} ms, now on the Prefetcher's worker thread instead of the training thread")


if __name__ == "__main__":
    from timing import run_with_scratch_caches

    run_with_scratch_caches(main, None, "relbench-batching-")  # type: ignore[arg-type]
