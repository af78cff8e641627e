#!/usr/bin/env python
"""SimFormer's two stage-1 models at R50 scale, side by side in one process: ``seg`` (proposal-pixel
transfer + complementary loss) and ``seg_crosim`` (+ cross-image pixel-pixel similarity), at the defaults
and with each documented speed option, training step time interleaved round by round.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_weakshot_step.py [--size 256] [--rounds 5]
    python benchmarks/bench_weakshot_step.py --size 512 --options defaults channels_last
    python benchmarks/bench_weakshot_step.py --profile          # + where each model's step goes, by op category
    python benchmarks/bench_weakshot_step.py --quick            # smoke run, 64 px, 1 round

Models: configs/coco_stuff_10k/split1/seg.yaml and seg_crosim.yaml (R50 with trainable BatchNorm from
random init, 100 queries, 6 decoder layers, K = 171, 43 novel classes), the same weights for the two (the
SimNet of ``seg_crosim`` is extra). Input: one image pair per step (``seg_crosim``) and the same two images
unpaired (``seg``), simulated weak-shot targets (``_measure.weakshot_pair_batch``: base classes with masks,
novel classes image-level). Options (``--options``, MODEL.MASK_FORMER keys):

  defaults        full-resolution matcher costs and mask losses, NCHW
  channels_last   CHANNELS_LAST True (NHWC convolutions)
  points          TRAIN_NUM_POINTS 12544 (point-sampled costs and losses, Mask2Former's objective)
  channels_last_points   both

Every (model, option) is built once and run once per round, the order rotated each round; printed per
option: median step seconds and the per-round ratios ``seg_crosim / seg`` and ``option / defaults``
(median and range). Writes ``benchmarks/results/weakshot_step_r50_<size>.json`` unless ``--no-record``.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _measure as M  # noqa: E402

CONFIGS = {
    "seg": os.path.join(M.REPO, "configs", "coco_stuff_10k", "split1", "seg.yaml"),
    "seg_crosim": os.path.join(M.REPO, "configs", "coco_stuff_10k", "split1", "seg_crosim.yaml"),
}
OPTIONS = {
    "defaults": [],
    "channels_last": ["MODEL.MASK_FORMER.CHANNELS_LAST", "True"],
    "points": ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "12544"],
    "channels_last_points": ["MODEL.MASK_FORMER.CHANNELS_LAST", "True", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "12544"],
}


def build_steps(size, options, device):
    """{(model, option): training-step callable} on one shared batch; models of one kind share weights."""
    import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    steps, first = {}, {}
    data = None
    for option in options:
        for name, config in CONFIGS.items():
            cfg = M.build_cfg(config, M.r50_opts(171, device) + OPTIONS[option])
            if data is None:
                novel = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).novel_class_ids
                data = M.weakshot_pair_batch(1, size, 171, novel, classes_per_image=8)
                unpaired = [{k: v for k, v in data[0].items() if k != "pair"}, data[0]["pair"]]
            torch.manual_seed(0)
            model = build_model(cfg)
            if name in first:  # the same weights for every option of one model
                model.load_state_dict(first[name])
            else:
                first[name] = {k: v.clone() for k, v in model.state_dict().items()}
            model.train()
            batch = data if name == "seg_crosim" else unpaired
            steps[(name, option)] = M.train_step_fn(model, build_optimizer(cfg, model), batch, cfg)
    return steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square input size")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs every model once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: OMP_NUM_THREADS / torch default)")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--profile", action="store_true", help="also print each step's self CPU time by op category")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/weakshot_step_r50_<size>.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 1 round, 1 warm-up, no record")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds, args.warmup, args.no_record = 64, 1, 1, True
    if "defaults" not in args.options:
        args.options = ["defaults"] + args.options
    threads = M.set_threads(args.threads)
    device = torch.device(args.device)
    steps = build_steps(args.size, args.options, args.device)

    # interleaved, order rotated per round: per-round ratios cancel the drift of a shared machine
    keys = list(steps)
    wall = {k: [] for k in keys}
    for r in range(args.warmup + args.rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        for k in order:
            M.sync(device)
            t0 = time.perf_counter()
            steps[k]()
            M.sync(device)
            if r >= args.warmup:
                wall[k].append(time.perf_counter() - t0)

    def ratios(a, b):
        v = sorted(x / y for x, y in zip(wall[a], wall[b]))
        return {"median": M.median(v), "min": v[0], "max": v[-1]}

    where = f"CPU, {M.machine_note(threads)}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"R50 seg vs seg_crosim (COCO-Stuff split 1 configs, K = 171), 1 pair = 2 x {args.size}² per step; {where}; "
          f"median of {args.rounds} interleaved rounds after {args.warmup} warm-up")
    print(f"{'option':24}{'seg (s)':>9}{'crosim (s)':>12}{'crosim / seg (range)':>26}{'seg / defaults':>22}{'crosim / defaults':>22}")
    rows = []
    for option in args.options:
        row = {"option": option, "opts": OPTIONS[option], "seg_s": M.median(wall[("seg", option)]),
               "seg_crosim_s": M.median(wall[("seg_crosim", option)]),
               "crosim_over_seg": ratios(("seg_crosim", option), ("seg", option)),
               "seg_over_defaults": ratios(("seg", option), ("seg", "defaults")),
               "crosim_over_defaults": ratios(("seg_crosim", option), ("seg_crosim", "defaults"))}  # fmt: skip
        rows.append(row)

        def fmt(x):
            return f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"

        print(f"{option:24}{row['seg_s']:9.3f}{row['seg_crosim_s']:12.3f}{fmt(row['crosim_over_seg']):>26}"
              f"{fmt(row['seg_over_defaults']):>22}{fmt(row['crosim_over_defaults']):>22}")
    print("targets: seg_crosim <= 1.1x seg; no speed option slower than the defaults")

    profiles = {}
    if args.profile:
        for option in args.options:
            for name in CONFIGS:
                profiles[f"{name}/{option}"] = M.op_categories(steps[(name, option)])
        cats = list(next(iter(profiles.values())))
        print("\nself CPU seconds of one step by op category (torch.profiler):")
        print(f"  {'category':56}" + "".join(f"{k:>32}" for k in profiles))
        for c in cats:
            print(f"  {c:56}" + "".join(f"{profiles[k][c]:32.3f}" for k in profiles))

    if not args.no_record:
        path = os.path.join(M.REPO, "benchmarks", "results", f"weakshot_step_r50_{args.size}.json")
        record = {"benchmark": "benchmarks/bench_weakshot_step.py", "size": args.size, "rounds": args.rounds,
                  "machine": where, "rows": rows, "wall_s": {f"{k[0]}/{k[1]}": v for k, v in wall.items()},
                  "profile_self_cpu_s": profiles}  # fmt: skip
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"record: {os.path.relpath(path, M.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
