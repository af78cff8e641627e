#!/usr/bin/env python
"""Extra parameters and inference time of each optional similarity component, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_components.py                  # synthetic stage-1 model, 128x128
    python benchmarks/bench_components.py --size 512 --rounds 10 MODEL.DEVICE cuda

Builds the SimFormer stage-1 model of every row of the related-components ablation from its config in
configs/synthetic/simformer/ (seg.yaml = baseline; seg_contrast, seg_srm, seg_crm, seg_ssa, seg_ccs,
seg_best), without weights, and times whole-model inference (batch 1, random image, post-processing
included), cycling through the models in a rotating order each round (medians reported). Parameters are
counted twice: the training model (with training-only parts: the pixel-contrast projection head in the
criterion, SSA's GT teacher) and the inference model (what inference runs and exports).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "synthetic", "simformer")
ROWS = [
    ("baseline (seg)", "seg.yaml"),
    ("+ pixel contrast", "seg_contrast.yaml"),
    ("+ SRM", "seg_srm.yaml"),
    ("+ CRM", "seg_crm.yaml"),
    ("+ SSA (pixel layer)", "seg_ssa.yaml"),
    ("+ CCS (instead of SSA)", "seg_ccs.yaml"),
    ("best: SSA + contrast", "seg_best.yaml"),
]


def build(config, opts, training: bool):
    cfg = get_cfg()
    add_simformer_config(cfg)
    from simformer.utils.config_merge import merge_config

    merge_config(cfg, os.path.join(CONFIGS, config), ["MODEL.WEIGHTS", "", "MODEL.SSA.TEACHER", str(training)] + list(opts))
    return build_model(cfg).eval()


def inference_parameters(model) -> int:
    """Parameters used at inference: everything but the criterion (training losses and their heads)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("criterion."))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="square input size (synthetic validation images: 128)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (each runs every model), after 1 warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    total = {label: sum(p.numel() for p in build(cfg, args.opts, True).parameters()) for label, cfg in ROWS}
    models = {label: build(cfg, args.opts, False) for label, cfg in ROWS}
    device = next(iter(models.values())).device
    image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
    inputs = [{"image": image, "height": args.size, "width": args.size}]
    times = {label: [] for label, _ in ROWS}
    labels = [label for label, _ in ROWS]
    with torch.no_grad():
        for r in range(args.rounds + 1):
            for label in labels[r % len(labels):] + labels[: r % len(labels)]:  # rotate the order each round
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                models[label](inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r > 0:
                    times[label].append(time.perf_counter() - t0)
    med = {label: statistics.median(v) * 1000 for label, v in times.items()}
    base = labels[0]
    base_inf = inference_parameters(models[base])
    where = f"{device.type}" + (f", {args.threads} thread(s)" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})")
    print(f"SimFormer stage-1 models of configs/synthetic/simformer/, {args.size}x{args.size}, batch 1, {where}, median of {args.rounds} rounds")
    print(f"{'row':26}{'params (train)':>16}{'params (infer)':>16}{'extra (infer)':>15}{'ms/image':>10}{'time ratio':>12}")
    for label in labels:
        inf = inference_parameters(models[label])
        print(f"{label:26}{total[label]:16,d}{inf:16,d}{inf - base_inf:+15,d}{med[label]:10.1f}{med[label] / med[base]:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
