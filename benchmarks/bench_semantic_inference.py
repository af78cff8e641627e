#!/usr/bin/env python
"""Semantic inference of the mask-classification models: upsample every mask, then sum (before) against
upsampling the queries in chunks into the scores in place (``upsampled_semantic_inference``, now the
default). Peak memory of each in a fresh process (RSS high-water mark above the inputs), and time side
by side in one process (interleaved rounds, median and range of the ratio).

    python benchmarks/bench_semantic_inference.py [--queries 100] [--classes 171] [--size 512] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from _measure import MIB, machine_note, median, peak_rss, reset_peak_rss, set_threads  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simformer.inference import semantic_inference, upsampled_semantic_inference  # noqa: E402


def before(cls, masks, size):
    return semantic_inference(cls, F.interpolate(masks, size=size, mode="bilinear", align_corners=False), inplace=True)


def after(cls, masks, size):
    return upsampled_semantic_inference(cls, masks, size)


def inputs(args):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, args.queries, args.classes + 1, generator=g), torch.randn(1, args.queries, args.size // 4, args.size // 4, generator=g)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--classes", type=int, default=171)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="")
    args = p.parse_args()
    set_threads(args.threads)
    cls, masks = inputs(args)
    size = (args.size, args.size)
    if args.worker:  # fresh process: peak RSS of one call above the inputs
        fn = {"before": before, "after": after}[args.worker]
        with torch.no_grad():
            fn(cls, masks, size)  # allocator warm-up
            reset_peak_rss()
            base = peak_rss()
            fn(cls, masks, size)
            print(json.dumps({"peak_delta_mib": (peak_rss() - base) / MIB}))
        return
    mem = {}
    for side in ("before", "after"):
        out = subprocess.run([sys.executable, __file__, "--worker", side, "--queries", str(args.queries), "--classes", str(args.classes), "--size", str(args.size), "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        mem[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_delta_mib"]
    times = {"before": [], "after": []}
    with torch.no_grad():
        diff = float((before(cls, masks, size) - after(cls, masks, size)).abs().max())
        for r in range(args.rounds + 2):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                t = time.perf_counter()
                (before if side == "before" else after)(cls, masks, size)
                if r >= 2:
                    times[side].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["after"], times["before"])]
    result = {"queries": args.queries, "classes": args.classes, "size": args.size, "machine": machine_note(args.threads), "max_abs_diff": diff,
              "peak_mib": {k: round(v, 1) for k, v in mem.items()}, "memory_ratio": round(mem["after"] / mem["before"], 3),
              "ms_median": {k: round(1000 * median(v), 1) for k, v in times.items()},
              "time_ratio_median": round(median(ratios), 3), "time_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
