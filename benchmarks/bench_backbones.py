#!/usr/bin/env python
"""Swin-T / ConvNeXt-T (timm) against ResNet-50 in the weak-shot model: parameters and training step time,
measured side by side in one process (interleaved rounds, median and range).

    python benchmarks/bench_backbones.py [--size 512] [--batch 2] [--rounds 5] [--threads 2] [--out FILE.json]

Every model is the COCO-Stuff-10K split-1 stage-1 model ``seg.yaml`` (100 queries, 6 decoder layers, 171
classes; as a fully supervised MaskFormer, since the weak-shot losses need weak-shot inputs) with its backbone as in the ``seg_crosim_swin_t`` / ``_convnext_t`` variants, from
random weights, fp32; the step is forward + backward + AdamW update on random images with block label
maps (every target with a mask).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import simformer  # noqa: E402,F401
from _measure import REPO, interleaved, machine_note, median, set_threads  # noqa: E402
from bench_speed import random_batch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from simformer.engine import build_optimizer  # noqa: E402
from simformer.tools.predict import build_cfg  # noqa: E402

def _timm(name):
    return ["MODEL.BACKBONE.NAME", "TimmBackbone", "MODEL.TIMM.NAME", name, "MODEL.TIMM.DROP_PATH_RATE", "0.3"]


# the backbone keys of configs/coco_stuff_10k/split1/seg_crosim_{swin_t,convnext_t}.yaml, on seg.yaml
VARIANTS = {"R50": [], "Swin-T": _timm("swin_tiny_patch4_window7_224"), "ConvNeXt-T": _timm("convnext_tiny")}


def build(extra, size):
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.META_ARCHITECTURE", "MaskFormer"] + extra
    cfg = build_cfg(os.path.join(REPO, "configs", "coco_stuff_10k", "split1", "seg.yaml"), opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    return cfg, model, build_optimizer(cfg, model)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args()
    set_threads(args.threads)
    steps, params = {}, {}
    for name, extra in VARIANTS.items():
        cfg, model, opt = build(extra, args.size)
        data = random_batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, model.device)
        params[name] = {"backbone_M": sum(p.numel() for p in model.backbone.parameters()) / 1e6, "model_M": sum(p.numel() for p in model.parameters()) / 1e6}

        def step(model=model, opt=opt, data=data):
            loss = sum(model(data).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    times = interleaved(steps, args.rounds, args.warmup, torch.device("cpu"))
    ref = median(times["R50"]["wall"])
    rows = []
    for name in VARIANTS:
        wall = times[name]["wall"]
        ratios = [w / r for w, r in zip(wall, times["R50"]["wall"])]
        rows.append({"backbone": name, **{k: round(v, 2) for k, v in params[name].items()}, "step_s_median": round(median(wall), 3), "step_s_range": [round(min(wall), 3), round(max(wall), 3)],
                     "ratio_to_R50_median": round(median(wall) / ref, 3), "ratio_to_R50_range": [round(min(ratios), 3), round(max(ratios), 3)]})
    result = {"size": args.size, "batch": args.batch, "rounds": args.rounds, "machine": machine_note(args.threads), "rows": rows}
    print(f"{'backbone':<11} {'backbone M':>10} {'model M':>8} {'step s':>8} {'x R50 (range)':>18}")
    for r in rows:
        print(f"{r['backbone']:<11} {r['backbone_M']:>10.2f} {r['model_M']:>8.2f} {r['step_s_median']:>8.3f} {r['ratio_to_R50_median']:>7.2f} ({r['ratio_to_R50_range'][0]:.2f}-{r['ratio_to_R50_range'][1]:.2f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
