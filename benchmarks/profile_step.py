#!/usr/bin/env python
"""Profile the training step of a config: top ops by self CPU time and the host-device syncs per step.

    python benchmarks/profile_step.py --config-file configs/synthetic/simformer/seg_crosim.yaml --steps 3
    python benchmarks/profile_step.py --config-file ... --steps 5 --top 15 MODEL.DEVICE cuda

Batches come from the config's own training loader (so pair configs get real image pairs); they are
fetched before profiling starts, so the numbers cover forward + loss + backward + optimizer step only
(no data loading). After ``--warmup`` unprofiled steps, ``--steps`` steps run under ``torch.profiler``.

Printed: the top ``--top`` ops by self CPU time, and per step the counts of the ops that make the host
wait for the device (``aten::item`` / ``aten::_local_scalar_dense``: ``.item()``, ``float(t)``,
``bool(t)``, ``.tolist()``; ``aten::nonzero``: boolean indexing, ``torch.nonzero``, ``unique``). On CPU
they cost little, but each one is a full pipeline stall on a GPU; the counts are what the hot path's
"no per-step syncs" rule is checked against.
"""
import argparse
import os
import time
import traceback
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
from detectron2.config import get_cfg
from simformer import add_simformer_config
from simformer.engine import Trainer, build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")


class _SyncRecorder(TorchDispatchMode):
    """Counts the sync ops by their innermost calling frames inside this repository."""

    OPS = {torch.ops.aten._local_scalar_dense.default: "_local_scalar_dense", torch.ops.aten.nonzero.default: "nonzero"}
    INDEX_OPS = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default)

    def __init__(self):
        super().__init__()
        self.sites = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = self.OPS.get(func)
        if name is None and func in self.INDEX_OPS and any(i is not None and i.dtype == torch.bool for i in args[1]):
            name = "nonzero (bool index)"  # the kernel turns a boolean index into nonzero() internally
        if name is not None:
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(REPO) and "site-packages" not in f.filename and "benchmarks" not in f.filename]
            where = " <- ".join(f"{os.path.relpath(f.filename, REPO)}:{f.lineno}" for f in reversed(frames[-3:]))
            self.sites[(name, where or "(outside the repository)")] += 1
        return func(*args, **(kwargs or {}))


def sync_call_sites(step, batches):
    """Run ``step`` on every batch under :class:`_SyncRecorder`; -> Counter {(op, call site): count}."""
    recorder = _SyncRecorder()
    with recorder:
        for data in batches:
            step(data)
    return recorder.sites


def build(args):
    cfg = get_cfg()
    add_simformer_config(cfg)
    from simformer.utils.config_merge import merge_config

    merge_config(cfg, args.config_file, args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--steps", type=int, default=3, help="profiled training steps")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps before (allocator, lazy init)")
    parser.add_argument("--top", type=int, default=15, help="rows of the op table")
    parser.add_argument("--sync-sources", type=int, default=0, metavar="N", help="also list the N Python call sites with the most sync ops (found in extra, unprofiled runs of the same steps)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    cfg = build(args)
    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    device = model.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def step(data):
        losses = model(data)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for data in batches[: args.warmup]:
        step(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for data in batches[args.warmup :]:
            step(data)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.steps

    events = prof.key_averages()
    print(f"config:  {args.config_file} {' '.join(args.opts)}")
    print(f"device:  {device} (torch threads: {torch.get_num_threads()}), {args.steps} profiled steps, {wall:.3f} s/step under the profiler")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48))
    counts = {e.key: e.count for e in events}
    print("host-device sync ops per step:")
    for name in SYNC_OPS:
        print(f"  {name:28s} {counts.get(name, 0) / args.steps:8.1f}")
    if args.sync_sources:
        parents = Counter()
        for e in prof.events():
            if e.name in ("aten::_local_scalar_dense", "aten::nonzero"):
                chain, p = [], e.cpu_parent
                while p is not None and len(chain) < 3:
                    chain.append(p.name)
                    p = p.cpu_parent
                parents[(e.name.split("::")[1], " <- ".join(chain) or "(top level)")] += 1
        print(f"parent ops of the sync ops (per step, top {args.sync_sources}):")
        for (op, chain), n in parents.most_common(args.sync_sources):
            print(f"  {n / args.steps:7.1f}  {op:22s} {chain}")
        sites = sync_call_sites(step, batches[args.warmup :])
        print(f"call sites of the sync ops (per step, top {args.sync_sources}; innermost repository frame first):")
        for (op, where), n in sites.most_common(args.sync_sources):
            print(f"  {n / args.steps:7.1f}  {op:22s} {where}")

if __name__ == "__main__":
    main()
