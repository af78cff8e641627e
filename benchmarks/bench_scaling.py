#!/usr/bin/env python
"""How training step time and peak memory grow with input size and with image pairs per step.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_scaling.py   # CPU, defaults below
    python benchmarks/bench_scaling.py --sizes 512 1024 --batch 2 --threads 8
    python benchmarks/bench_scaling.py --quick                               # smoke run, tiny sizes
    python benchmarks/bench_scaling.py MODEL.MASK_FORMER.TRAIN_NUM_POINTS 12544   # overrides, both parts

1. Size: MaskFormer-R50 (configs/maskformer/maskformer_R50.yaml, random init, trainable BN, K = 171) at
   ``--sizes`` (256 512 768 1024) x ``--batch`` (1) images, 8 mask targets per image.
2. Pairs: SimFormer with configs/synthetic/simformer/seg_crosim.yaml (cross-image SimNet losses and
   distillation, complementary loss) at ``--pair-size`` (256) with ``--pairs`` (1 2 4) pairs per step, next
   to configs/synthetic/simformer/seg.yaml (same model and weak-shot targets, no cross-image losses) on the
   same 2P images, so the cost of the cross-image losses shows as the difference.

Every point runs in its own fresh subprocess (benchmarks/_measure.py): median step time (forward with
losses + backward + the project's optimizer) of ``--steps`` after ``--warmup``, and the peak memory over all
of them (CPU: RSS high-water mark, total and delta over the RSS after build; CUDA: max allocated).
Step times are given as wall-clock and as process CPU seconds (all threads; steadier on a shared machine).
Printed per step of each series: the time and memory growth against the growth of pixels (or images),
and the exponent log(time ratio) / log(pixel ratio) (1 = linear in pixels).

On a shared machine keep OMP_WAIT_POLICY=PASSIVE: with more busy processes than cores, OpenMP's default
spinning wait made 2-thread steps up to 50x slower here (see ``_measure.machine_note``).
"""
import argparse
import json
import math
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure as M  # noqa: E402

SEG_CONFIG = os.path.join(M.REPO, "configs", "synthetic", "simformer", "seg.yaml")


def measure_point(point: Dict, steps: int, warmup: int, opts: List[str]) -> Dict:
    """Build the model of ``point`` and time its training step under :class:`_measure.PeakMemory`.

    point: {"kind": "size", "size": S, "batch": B} (MaskFormer-R50) or
           {"kind": "pairs", "size": S, "pairs": P, "crosim": bool} (SimFormer seg_crosim / seg).
    Returns step_s (median wall), cpu_s (median process CPU seconds), peak, baseline, delta, state (bytes of gradients + optimizer state), method, images, params."""
    import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    if point["kind"] == "size":
        cfg = M.build_cfg(M.R50_CONFIG, M.r50_opts(171) + list(opts))
        data = M.maskformer_batch(point["batch"], point["size"], 171)
        images = point["batch"]
    elif point["kind"] == "pairs":
        if point["crosim"]:
            cfg = M.build_cfg(M.CROSIM_CONFIG, list(opts))
        else:  # seg.yaml trains on single images: the same 2P images, unpaired
            cfg = M.build_cfg(SEG_CONFIG, list(opts))
        k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        novel = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).novel_class_ids
        data = M.weakshot_pair_batch(point["pairs"], point["size"], k, novel, classes_per_image=min(8, k))
        if not point["crosim"]:
            data = [y for x in data for y in (x, x.pop("pair"))]
        images = 2 * point["pairs"]
    else:
        raise ValueError(f"unknown point kind {point['kind']!r}; expected 'size' or 'pairs'")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    step = M.train_step_fn(model, optimizer, data, cfg)
    with M.PeakMemory(model.device) as mem:
        times = M.interleaved({"step": step}, steps, warmup, model.device)["step"]
    state = M.training_state_bytes(model, optimizer)
    return {"step_s": M.median(times["wall"]), "cpu_s": M.median(times["cpu"]), "peak": mem.peak, "baseline": mem.baseline, "delta": mem.delta, "state": state, "method": mem.method, "images": images, "params": sum(p.numel() for p in model.parameters())}


def run_point(point: Dict, args) -> Dict:
    task = {"point": point, "steps": args.steps, "warmup": args.warmup, "opts": list(args.opts)}
    return M.run_worker(os.path.abspath(__file__), task, args.threads or torch.get_num_threads())


def growth(xs: List[float], ys: List[float]) -> List[Dict]:
    """Consecutive growth of ``ys`` against ``xs``: x ratio, y ratio and exponent log(y ratio) / log(x ratio)."""
    rows = []
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        rx, ry = x1 / x0, y1 / y0
        rows.append({"from": x0, "to": x1, "x_ratio": rx, "y_ratio": ry, "exponent": math.log(ry) / math.log(rx) if rx != 1 and ry > 0 else float("nan")})
    return rows


def _mib(b):
    return b / M.MIB


def _activations(r):
    """Peak memory over the build baseline less gradients and optimizer state (at least 1 byte)."""
    return max(r["delta"] - r["state"], 1)


def _growths(xs, results):
    """Growth of step time, CPU time and activation memory along ``xs`` (see :func:`growth`)."""
    return (growth(xs, [r["step_s"] for r in results]), growth(xs, [r["cpu_s"] for r in results]),
            growth(xs, [_activations(r) for r in results]))  # fmt: skip


def print_size_series(sizes, results, batch):
    print(f"\n1. MaskFormer-R50, batch {batch}: training step vs input size")
    print(f"{'size':>6}{'pixels':>10}{'step (s)':>10}{'CPU (s)':>10}{'peak total':>12}{'delta':>8}{'delta - state':>15}  (MiB; state = grads + AdamW moments)")
    for s, r in zip(sizes, results):
        print(f"{s:>6}{s * s:>10,d}{r['step_s']:10.3f}{r['cpu_s']:10.3f}{_mib(r['peak']):12.0f}{_mib(r['delta']):8.0f}{_mib(_activations(r)):15.0f}")
    t, c, m = _growths([s * s for s in sizes], results)
    print(f"{'growth':>13}{'pixels x':>10}{'time x':>9}{'exp':>6}{'CPU x':>8}{'exp':>6}{'(delta-state) x':>17}{'exp':>6}")
    for a, b, d in zip(t, m, c):
        print(f"{int(math.sqrt(a['from'])):>5}->{int(math.sqrt(a['to'])):<5}{'':2}{a['x_ratio']:8.2f}{a['y_ratio']:9.2f}{a['exponent']:6.2f}{d['y_ratio']:8.2f}{d['exponent']:6.2f}{b['y_ratio']:17.2f}{b['exponent']:6.2f}")
    if 512 in sizes and 1024 in sizes:
        i, j = sizes.index(512), sizes.index(1024)
        rt = results[j]["step_s"] / results[i]["step_s"]
        rc = results[j]["cpu_s"] / results[i]["cpu_s"]
        rm = _activations(results[j]) / _activations(results[i])
        print(f"512 -> 1024: 4.00x pixels, {rt:.2f}x step time ({rc:.2f}x CPU time), {rm:.2f}x peak memory delta - state")


def print_pair_series(pairs, crosim, plain, size):
    print(f"\n2. SimFormer seg_crosim (cross-image losses) vs seg (none), {size}x{size}: training step vs pairs per step")
    print(f"{'pairs':>6}{'images':>8}{'crosim (s)':>12}{'seg (s)':>10}{'crosim CPU (s)':>16}{'seg CPU (s)':>13}{'crosim cost':>13}{'crosim peak/delta (MiB)':>26}{'seg peak/delta (MiB)':>23}")
    for p, c, s in zip(pairs, crosim, plain):
        cost = f"{100 * (c['cpu_s'] / s['cpu_s'] - 1):+.0f} %"
        print(f"{p:>6}{2 * p:>8}{c['step_s']:12.3f}{s['step_s']:10.3f}{c['cpu_s']:16.3f}{s['cpu_s']:13.3f}{cost:>13}{_mib(c['peak']):17.0f} / {_mib(c['delta']):<6.0f}{_mib(s['peak']):14.0f} / {_mib(s['delta']):<6.0f}")
    t, c, m = _growths(pairs, crosim)
    print(f"{'growth':>13}{'pairs x':>9}{'time x':>9}{'exp':>6}{'CPU x':>8}{'exp':>6}{'(delta-state) x':>17}{'exp':>6}   (crosim; cost = CPU time vs seg)")
    for a, b, d in zip(t, m, c):
        print(f"{int(a['from']):>5}->{int(a['to']):<5}{'':3}{a['x_ratio']:8.2f}{a['y_ratio']:9.2f}{a['exponent']:6.2f}{d['y_ratio']:8.2f}{d['exponent']:6.2f}{b['y_ratio']:17.2f}{b['exponent']:6.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 768, 1024], help="square input sizes (R50 series)")
    parser.add_argument("--batch", type=int, default=1, help="images per step of the size series")
    parser.add_argument("--pairs", type=int, nargs="*", default=[1, 2, 4], help="pairs per step (SimFormer series)")
    parser.add_argument("--pair-size", type=int, default=256, help="input size of the pair series")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: OMP_NUM_THREADS / torch default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 64 128, pairs 1 2 at 64, 1 step")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (both series)")
    args = parser.parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        M.set_threads(args.threads)
        M.report(measure_point(task["point"], task["steps"], task["warmup"], task["opts"]))
        return 0
    if args.quick:
        args.sizes, args.pairs, args.pair_size, args.steps, args.warmup = [64, 128], [1, 2], 64, 1, 1
    threads = M.set_threads(args.threads)

    size_results = [run_point({"kind": "size", "size": s, "batch": args.batch}, args) for s in args.sizes]
    crosim = [run_point({"kind": "pairs", "size": args.pair_size, "pairs": p, "crosim": True}, args) for p in args.pairs]
    plain = [run_point({"kind": "pairs", "size": args.pair_size, "pairs": p, "crosim": False}, args) for p in args.pairs]

    device = M.build_cfg(M.R50_CONFIG, M.r50_opts(171) + list(args.opts)).MODEL.DEVICE
    where = f"CPU, {M.machine_note(threads)}" if device == "cpu" else device
    print(f"training step scaling; {where}")
    print(f"each point in a fresh subprocess; median of {args.steps} steps after {args.warmup} warm-up; memory: "
          f"{size_results[0]['method'] if size_results else ''}, delta = peak - RSS after model build and inputs")
    if args.opts:
        print(f"config overrides: {' '.join(args.opts)}")
    if args.sizes:
        print_size_series(args.sizes, size_results, args.batch)
    if args.pairs:
        print_pair_series(args.pairs, crosim, plain, args.pair_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
