#!/usr/bin/env python
"""Inference cost of SSA in the per-pixel model, measured side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_ssa_cost.py                    # R50, 512x512, K = 171, CPU
    python benchmarks/bench_ssa_cost.py --threads 8 --rounds 20 MODEL.DEVICE cuda

Builds the per-pixel baseline (configs/maskformer/per_pixel_R50.yaml, 1x1 classifier) and the same model
with SSA (configs/ssa/per_pixel_R50_ssa.yaml, inference form: MODEL.SSA.TEACHER False) without weights,
then times whole-model inference (batch 1, random image, post-processing to the input size included) and
the classifier alone on the head's features, alternating the two models each round (medians reported).
Prints parameters with and without SSA, the increase against 4C^2 + KC + 12C (spec §1; exit status 1 if
it differs) and the added inference time (target: <= 10 %).
"""
import argparse
import os
import statistics
import sys
import time

import torch

import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from simformer import add_simformer_config
from ssa_adapter import SSATeacher, inference_parameter_increase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(REPO, "configs", "maskformer", "per_pixel_R50.yaml")
SSA = os.path.join(REPO, "configs", "ssa", "per_pixel_R50_ssa.yaml")


def build(config, num_classes, opts):
    cfg = get_cfg()
    add_simformer_config(cfg)
    from simformer.utils.config_merge import merge_config

    merge_config(cfg, config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes), "MODEL.SSA.TEACHER", "False"] + opts)
    return cfg, build_model(cfg).eval()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square input size")
    parser.add_argument("--num-classes", type=int, default=171, help="K")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs both models), after 1 warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for both models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg, baseline = build(BASELINE, args.num_classes, args.opts)
    _, ssa = build(SSA, args.num_classes, args.opts)
    ssa.load_state_dict(baseline.state_dict(), strict=False)  # same backbone / decoder / 1x1 weights
    device = baseline.device
    channels, k = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, args.num_classes

    image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
    inputs = [{"image": image, "height": args.size, "width": args.size}]
    with torch.no_grad():
        features = baseline.backbone(((image.to(device).float() - baseline.pixel_mean) / baseline.pixel_std)[None])
        mask_features = baseline.sem_seg_head.pixel_decoder.forward_features(features)[0]
    classifiers = {"baseline": baseline.sem_seg_head.classifier, "ssa": ssa.sem_seg_head.classifier}
    models = {"baseline": baseline, "ssa": ssa}

    times = {name: [] for name in ("baseline", "ssa", "baseline_cls", "ssa_cls")}
    with torch.no_grad():
        for r in range(args.rounds + 1):
            order = ("baseline", "ssa") if r % 2 == 0 else ("ssa", "baseline")
            for name in order:
                t_model = timed(lambda: models[name](inputs), device)
                t_cls = timed(lambda: classifiers[name](mask_features), device)
                if r > 0:
                    times[name].append(t_model)
                    times[name + "_cls"].append(t_cls)
    med = {name: statistics.median(v) * 1000 for name, v in times.items()}

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    p_base, p_ssa = count(baseline), count(ssa)
    formula = inference_parameter_increase(channels, k)
    teacher = count(SSATeacher(channels, k, channels // 2))

    where = f"{device.type}" + (f", {args.threads} thread(s)" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})")
    print(f"R50 per-pixel model, {args.size}x{args.size}, K = {k}, C = {channels} (mask features {tuple(mask_features.shape[-2:])}), "
          f"batch 1, {where}, median of {args.rounds} rounds")
    print(f"{'':24}{'baseline':>12}{'+SSA':>12}{'ratio':>9}")
    print(f"{'inference (ms/image)':24}{med['baseline']:12.1f}{med['ssa']:12.1f}{med['ssa'] / med['baseline']:9.3f}")
    print(f"{'classifier only (ms)':24}{med['baseline_cls']:12.1f}{med['ssa_cls']:12.1f}{med['ssa_cls'] / med['baseline_cls']:9.1f}")
    print(f"{'parameters':24}{p_base:12,d}{p_ssa:12,d}{p_ssa / p_base:9.4f}")
    added = 100 * (med["ssa"] / med["baseline"] - 1)
    print(f"added inference time: {added:+.1f} % (target <= 10 %: {'met' if added <= 10 else 'NOT met'}); "
          f"whole model {med['ssa'] - med['baseline']:+.1f} ms, classifier alone {med['ssa_cls'] - med['baseline_cls']:+.1f} ms")
    ok = p_ssa - p_base == formula
    print(f"parameter increase {p_ssa - p_base:,d} vs 4C^2 + KC + 12C = {formula:,d}: {'equal' if ok else 'DIFFERENT'}; "
          f"training-only teacher (not counted, not exported): {teacher:,d} = 4C^2 + 2C = {4 * channels**2 + 2 * channels:,d}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
