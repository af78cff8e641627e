#!/usr/bin/env python
"""Training s/iter and inference ms/image of a config, measured in one run.

    python benchmarks/bench_speed.py --config-file configs/synthetic/maskformer_R18_fully_supervised.yaml
    python benchmarks/bench_speed.py --config-file ... --size 512 --batch 2 --iters 5 MODEL.DEVICE cuda

Inputs are random images with random label maps (blocks of classes) at ``--size`` (default: the
config's crop size), so the number measures the model + loss + optimizer step, not data loading.
"""
import argparse
import time

import torch

import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from simformer import add_simformer_config
from simformer.data.dataset_mappers import label_map_to_targets
from simformer.engine import build_optimizer


def random_batch(batch, size, num_classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    block = max(size // 8, 1)
    out = []
    for _ in range(batch):
        label = torch.randint(0, num_classes, (size // block + 1, size // block + 1), generator=g)
        label = label.repeat_interleave(block, 0).repeat_interleave(block, 1)[:size, :size]
        classes, masks = label_map_to_targets(label, 255)
        inst = Instances((size, size))
        inst.gt_classes, inst.gt_masks = classes, masks
        out.append({"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g), "instances": inst, "height": size, "width": size})
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--size", type=int, default=0, help="square input size (default: INPUT.CROP.SIZE)")
    parser.add_argument("--batch", type=int, default=0, help="training images per step (default: SOLVER.IMS_PER_BATCH)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (after 2 warm-up ones)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    cfg = get_cfg()
    add_simformer_config(cfg)
    from simformer.utils.config_merge import merge_config

    merge_config(cfg, args.config_file, args.opts)
    size = args.size or int(cfg.INPUT.CROP.SIZE[0])
    batch = args.batch or cfg.SOLVER.IMS_PER_BATCH
    model = build_model(cfg)
    device = model.device
    optimizer = build_optimizer(cfg, model)
    data = random_batch(batch, size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)

    model.train()
    times = []
    for i in range(args.iters + 2):
        sync(device)
        t0 = time.perf_counter()
        losses = model(data)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    train_s = sorted(times)[len(times) // 2]

    model.eval()
    inf_times = []
    with torch.no_grad():
        for i in range(args.iters + 2):
            sync(device)
            t0 = time.perf_counter()
            model([{"image": data[i % batch]["image"], "height": size, "width": size}])
            sync(device)
            if i >= 2:
                inf_times.append(time.perf_counter() - t0)
    inf_ms = 1000 * sorted(inf_times)[len(inf_times) // 2]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"config:            {args.config_file}")
    print(f"device:            {device} (torch threads: {torch.get_num_threads()})")
    print(f"model parameters:  {params:.2f} M")
    print(f"input:             {batch} x {size}x{size} (train), 1 x {size}x{size} (inference)")
    print(f"training:          {train_s:.3f} s/iter (median of {args.iters})  = {batch / train_s:.1f} images/s")
    print(f"inference:         {inf_ms:.1f} ms/image (median of {args.iters})")


if __name__ == "__main__":
    main()
