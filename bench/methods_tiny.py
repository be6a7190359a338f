"""Seconds per image of every registered method in the tiny profile (64 px, demo benchmark).

    python bench/methods_tiny.py [--seeds 0,1] [--output /tmp/relbench-methods]

Runs one `relbench evaluate` per method (no metrics) and reports, from the rows'
``generation_seconds``, the median per image and the first batch (which includes training for
methods that fine-tune on first use), plus the method's load time (wall time minus generation).
Methods that need settings get them: a LoRA for dreamrelation (trained here for 2 steps on the
shared sample data when present, else an untrained one), exemplar images for reversion (the demo
photos), a folder of images for folder (the reference-collage images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--output", type=Path, default=Path("/tmp/relbench-methods"))
    args = parser.parse_args(argv)

    from relbench.methods import METHODS
    from relbench.runner import EvaluateOptions, evaluate

    shutil.rmtree(args.output, ignore_errors=True)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    overrides = required_settings(args.output)
    print(f"tiny profile, demo benchmark (4 cases), 64 px, seeds {seeds}, CPU threads {os.cpu_count()}")
    order = [n for n in METHODS.names() if n != "folder"] + ["folder"]  # folder scores reference-collage's images
    for name in order:
        if name == "folder":
            overrides["folder"] = {"path": str(args.output / "reference-collage" / "images" / "reference-collage"), "name": "collage-copy"}
        began = time.perf_counter()
        evaluate(EvaluateOptions(benchmark="demo", output=args.output / name, methods=[name], metrics=["none"], seeds=seeds,
                                 method_overrides={name: overrides[name]} if name in overrides else {}, progress=False))
        wall = time.perf_counter() - began
        rows = [json.loads(line) for line in (args.output / name / "samples.jsonl").read_text().splitlines()]
        seconds = [r["generation_seconds"] for r in rows if r["generation_seconds"] is not None]
        total = sum(seconds)
        print(f"{name:<18} median {statistics.median(seconds) * 1000:8.1f} ms/image   first batch {seconds[0] * 1000:8.1f} ms/image   "
              f"load+other {wall - total:5.1f} s   ({len(rows)} images)")


def required_settings(root: Path) -> dict[str, dict[str, str]]:
    from relbench.data_root import load_image
    from relbench.methods.dreamrelation.lora import add_relation_lora, save_relation_lora
    from relbench.methods.reversion.data import Exemplar, write_exemplar_folder
    from relbench.tiny import tiny_sdxl_components

    unet = tiny_sdxl_components(0)["unet"]
    add_relation_lora(unet, seed=0)
    lora = save_relation_lora(unet, root / "lora")
    image = load_image("skimage:astronaut", root).resize((64, 64))
    for relation in ("hug", "carry", "next_to", "on_top_of"):
        write_exemplar_folder([Exemplar(image, ("astronaut {} rocket",), "skimage:astronaut")], root / "exemplars" / relation)
    return {"dreamrelation": {"loras": str(lora)}, "reversion": {"exemplars": str(root / "exemplars")}}


if __name__ == "__main__":
    main()
