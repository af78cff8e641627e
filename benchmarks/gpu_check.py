#!/usr/bin/env python
"""The GPU check of issue 22 in one call (at most about 8 minutes on an H100 / H200), tables to ``--out``:

    python benchmarks/gpu_check.py --out $OUT                 # on the device machine (CUDA)
    python benchmarks/gpu_check.py --out /tmp/gpu --dry-run   # on a CPU: the same code paths, tiny sizes

On the device, install the bundle first (``tools/build_gpu_bundle.sh`` here, ``tools/install_gpu_bundle.sh``
there); ``benchmarks/gpu_check.sh`` does both and runs this script. Sections (each writes a Markdown table
``<out>/<n>_*.md``, all of them also ``<out>/gpu_check.json``; a failing section is reported, the others run):

1. ``tests``: the CUDA tests (``pytest -m cuda``: float16 + GradScaler, no host-device sync in the training
   step, CUDA = CPU numerics) pass on the GPU.
2. ``throughput``: R50 MaskFormer (the architecture of the HF peer) and SimFormer ``seg`` / ``seg_crosim``
   (configs/coco_stuff_10k/split1, random init, trainable BN) at 512x512, 8 images (4 pairs) per step:
   images/s and peak memory (``torch.cuda.max_memory_allocated``) for fp32, bf16 autocast and fp16 +
   GradScaler, and ``seg`` with ``MODEL.MASK_FORMER.CHANNELS_LAST`` and point-sampled losses
   (``TRAIN_NUM_POINTS 12544``). ``--iters`` timed steps after ``--warmup``, timed by two CUDA events
   around the whole loop (no host sync inside it); host syncs per step counted with
   ``torch.cuda.set_sync_debug_mode("warn")`` on one extra step.
3. ``peer``: the Hugging Face MaskFormer (benchmarks/bench_vs_hf_maskformer.py) at the same settings and
   precision: ratios ours / peer of the step time and peak memory.
4. ``consistency``: the synthetic R18 MaskFormer's first ``--consistency-steps`` training losses on the
   GPU against the CPU (same init, same batch, TF32 off), and ``simformer-predict``'s ``Predictor``
   throughput (images/s, R50 MaskFormer, 512x512, batch 8).

Every section stops starting new cases once ``--budget`` seconds have passed (the rows left out are
listed), so the call fits the device's time.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _measure as M  # noqa: E402

REPO = M.REPO
SEG_CONFIG = os.path.join(REPO, "configs", "coco_stuff_10k", "split1", "seg.yaml")
SEG_CROSIM_CONFIG = os.path.join(REPO, "configs", "coco_stuff_10k", "split1", "seg_crosim.yaml")
PRECISIONS = {
    "fp32": [],
    "bf16": ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"],
    "fp16": ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "float16"],
}
OPTIONS = {
    "defaults": [],
    "channels-last": ["MODEL.MASK_FORMER.CHANNELS_LAST", "True"],
    "points": ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "12544"],
    "channels-last + points": ["MODEL.MASK_FORMER.CHANNELS_LAST", "True", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "12544"],
}


DRY_RUN_CASES = [("maskformer", "fp32", "defaults"), ("seg", "fp32", "channels-last + points"), ("seg_crosim", "fp32", "defaults"), ("seg", "bf16", "defaults")]


def throughput_cases():
    """(model, precision, option) rows of section 2, most important first (the budget cuts the tail)."""
    cases = [(m, p, "defaults") for p in PRECISIONS for m in ("maskformer", "seg", "seg_crosim")]
    cases += [("seg", p, o) for p in ("bf16", "fp32") for o in ("channels-last", "points", "channels-last + points")]
    cases += [("seg_crosim", "bf16", o) for o in ("channels-last", "points")]
    return cases


class Budget:
    def __init__(self, seconds):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self):
        return self.seconds - (time.perf_counter() - self.start)


# ---------------------------------------------------------------- models and steps
def _hf_args(args, precision):
    return argparse.Namespace(num_classes=171, device=args.device, batch=args.images, size=args.size, classes_per_image=8,
                              ours_opts=list(PRECISIONS[precision]), no_deep_supervision=False, peer_channels_last=False)  # fmt: skip


def build_ours(model, precision, option, args):
    """(cfg, model, train step) of one section-2 row; the batch is made on the CPU and moved by the model."""
    import simformer  # noqa: F401
    from detectron2.data import MetadataCatalog

    import bench_vs_hf_maskformer as HF

    extra = PRECISIONS[precision] + OPTIONS[option]
    if model == "maskformer":  # the architecture of the HF peer (bench_vs_hf_maskformer.ours_cfg)
        hf = _hf_args(args, precision)
        hf.ours_opts = extra
        cfg = HF.ours_cfg(hf)
        data = M.maskformer_batch(args.images, args.size, 171)
    else:
        config = SEG_CROSIM_CONFIG if model == "seg_crosim" else SEG_CONFIG
        cfg = M.build_cfg(config, M.r50_opts(171, args.device) + extra)
        novel = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).novel_class_ids
        data = M.weakshot_pair_batch(args.images // 2, args.size, 171, novel)
        if model == "seg":  # seg trains on single images: the same images, unpaired
            data = [y for x in data for y in (x, x.pop("pair"))]
    net, optimizer = HF.build_ours(cfg)
    return cfg, net, M.train_step_fn(net, optimizer, data, cfg)


def build_peer(precision, args):
    import bench_vs_hf_maskformer as HF

    step, _, extra = HF.build_side("peer", _hf_args(args, precision))
    return extra["model"], step


def time_steps(step, device, warmup, iters):
    """Seconds per step: ``warmup`` untimed steps, then ``iters`` steps between two CUDA events (no host
    sync inside the loop); on a CPU the wall clock."""
    for _ in range(warmup):
        step()
    M.sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


def count_host_syncs(step, device):
    """Host-device synchronisations of one step (CUDA's sync debug mode warns at each); None on a CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def peak_memory_start(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else M.peak_rss()


def _free():
    """Collect what the caller has just deleted and return the CUDA cache (peak memory of the next row)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- sections
def section_tests(args, budget, out):
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", os.path.join(REPO, "tests"), "-p", "no:cacheprovider"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(60, budget.left()))
    tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
    rows = [{"command": " ".join(cmd[1:]), "returncode": res.returncode, "summary": tail[-1] if tail else ""}]
    with open(os.path.join(out, "1_tests.md"), "w") as f:
        f.write("| command | exit | summary |\n|---|---|---|\n")
        f.write(f"| `pytest -q -m cuda tests` | {res.returncode} | {rows[0]['summary']} |\n\n```\n" + "\n".join(tail) + "\n```\n")
    if res.returncode not in (0, 5):  # 5: nothing collected (a CPU dry run)
        raise RuntimeError("CUDA tests failed:\n" + "\n".join(tail))
    return rows


def section_throughput(args, budget, out, peer=False):
    device = torch.device(args.device)
    rows, skipped = [], []
    if peer:
        cases = [("peer", p, "defaults") for p in (["fp32"] if args.dry_run else PRECISIONS)]
    else:
        cases = DRY_RUN_CASES if args.dry_run else throughput_cases()
    for model, precision, option in cases:
        if budget.left() < args.case_seconds:
            skipped.append(f"{model} {precision} {option}")
            continue
        if precision == "fp16" and device.type != "cuda":  # float16 + GradScaler is CUDA-only (SOLVER.AMP)
            continue
        row = {"model": model, "precision": precision, "option": option, "images": args.images, "size": args.size}
        try:
            peak_memory_start(device)
            if model == "peer":
                net, step = build_peer(precision, args)
            else:
                _, net, step = build_ours(model, precision, option, args)
            sec = time_steps(step, device, args.warmup, args.iters)
            row.update(step_s=sec, images_per_s=args.images / sec, peak_mib=peak_memory(device) / M.MIB, host_syncs=count_host_syncs(step, device))
            del net, step
            _free()
        except Exception as e:  # noqa: BLE001  (a row that fails is reported; the others run)
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        rows.append(row)
        print(f"[gpu_check] {model:<10} {precision} {option:<24} " + (f"{row['images_per_s']:8.1f} img/s  {row['peak_mib']:8.0f} MiB  syncs {row['host_syncs']}" if "step_s" in row else row["error"]), flush=True)
    name = "3_peer.md" if peer else "2_throughput.md"
    with open(os.path.join(out, name), "w") as f:
        f.write(f"{args.size}x{args.size}, {args.images} images per step, {args.iters} timed steps after {args.warmup} warm-up ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU dry run'})\n\n")
        f.write("| model | precision | option | images/s | step (ms) | peak memory (MiB) | host syncs / step |\n|---|---|---|---|---|---|---|\n")
        for r in rows:
            if "step_s" in r:
                f.write(f"| {r['model']} | {r['precision']} | {r['option']} | {r['images_per_s']:.1f} | {1000 * r['step_s']:.0f} | {r['peak_mib']:.0f} | {r['host_syncs']} |\n")
            else:
                f.write(f"| {r['model']} | {r['precision']} | {r['option']} | failed: {r['error']} | | | |\n")
        if skipped:
            f.write(f"\nNot run (time budget): {', '.join(skipped)}\n")
    return rows


def ratios(ours_rows, peer_rows):
    """ours / peer step time and peak memory per precision, for MaskFormer and seg at defaults."""
    peer = {r["precision"]: r for r in peer_rows if "step_s" in r}
    out = []
    for r in ours_rows:
        p = peer.get(r["precision"])
        if r["option"] == "defaults" and r["model"] in ("maskformer", "seg") and "step_s" in r and p:
            out.append({"model": r["model"], "precision": r["precision"], "step_ratio": r["step_s"] / p["step_s"], "memory_ratio": r["peak_mib"] / p["peak_mib"]})
    fp32 = {r["model"]: r for r in ours_rows if r["precision"] == "fp32" and r["option"] == "defaults" and "step_s" in r}
    for r in ours_rows:
        base = fp32.get(r["model"])
        if base and r["precision"] != "fp32" and r["option"] == "defaults" and "step_s" in r:
            out.append({"model": r["model"], "precision": f"{r['precision']} vs fp32", "amp_speedup": base["step_s"] / r["step_s"]})
    return out


def section_consistency(args, budget, out):
    """First training losses of the synthetic R18 MaskFormer on the GPU vs the CPU, and Predictor speed."""
    import simformer  # noqa: F401
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    losses, init_state = {}, None
    for dev in ("cpu", args.device):
        cfg = M.build_cfg(M.R18_SYNTHETIC_CONFIG, ["MODEL.DEVICE", dev])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        if init_state is None:  # the CPU model's initial weights, given to the device model
            init_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(init_state)
        optimizer = build_optimizer(cfg, model)
        data = M.maskformer_batch(8, 96, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, classes_per_image=5, seed=1)
        seq = []
        for _ in range(args.consistency_steps):
            torch.manual_seed(1)  # the same dropout / point sampling draws on both devices' CPU generators
            loss_dict = model(data)
            loss = sum(loss_dict.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seq.append(float(loss.detach()))
        losses[dev] = seq
        del model, optimizer
        _free()
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["cpu"], losses[args.device])]
    rows = [{"step": i, "cpu": a, "gpu": b, "rel_diff": r} for i, (a, b, r) in enumerate(zip(losses["cpu"], losses[args.device], rel))]
    # Predictor throughput (simformer-predict's engine), R50 MaskFormer with random weights saved to a file
    from simformer.engine.predictor import Predictor

    import bench_vs_hf_maskformer as HF

    cfg = HF.ours_cfg(_hf_args(args, "fp32"))
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "model.pth")
        torch.manual_seed(0)
        torch.save({"model": build_model(cfg.clone()).state_dict()}, weights)
        pcfg = cfg.clone()
        pcfg.defrost()
        pcfg.INPUT.MIN_SIZE_TEST, pcfg.INPUT.MAX_SIZE_TEST = args.size, args.size
        pcfg.freeze()
        predictor = Predictor(pcfg, weights, args.device)
    images = [np.random.default_rng(i).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for i in range(args.images)]
    predictor(images[:2])
    M.sync(torch.device(args.device))
    t0 = time.perf_counter()
    reps = max(1, args.iters // 10)
    for _ in range(reps):
        predictor(images)
    M.sync(torch.device(args.device))
    predict_ips = reps * len(images) / (time.perf_counter() - t0)
    with open(os.path.join(out, "4_consistency.md"), "w") as f:
        f.write(f"Synthetic R18 MaskFormer, same init and batch, TF32 off: total training loss per step, CPU vs {args.device}\n\n")
        f.write("| step | CPU | GPU | relative difference |\n|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['step']} | {r['cpu']:.5f} | {r['gpu']:.5f} | {r['rel_diff']:.2e} |\n")
        f.write(f"\nPredictor (simformer-predict), R50 MaskFormer, {args.size}x{args.size}, batch {len(images)}: {predict_ips:.1f} images/s (labels to host included)\n")
    return {"losses": rows, "predict_images_per_s": predict_ips, "tolerance": {"step0": 1e-3, "later": 2e-2},
            "within_tolerance": bool(rel and rel[0] <= 1e-3 and max(rel) <= 2e-2)}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "output/gpu_check"), help="folder for the tables (default: $OUT)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=8, help="images per training step (seg_crosim: half as many pairs)")
    parser.add_argument("--iters", type=int, default=30, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--consistency-steps", type=int, default=5)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; no new row starts after this")
    parser.add_argument("--case-seconds", type=float, default=15.0, help="a row is started only with this much budget left")
    parser.add_argument("--sections", default="tests,throughput,peer,consistency")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 64x64, 2 images, 1 timed step, 4 rows: the code paths only")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.size, args.images, args.iters, args.warmup, args.consistency_steps = "cpu", 64, 2, 1, 0, 2
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on the GPU machine, or use --dry-run")
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget)
    result = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu (dry run)", "torch": torch.__version__,
              "args": vars(args), "sections": {}, "errors": {}}  # fmt: skip
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for name in sections:
        print(f"[gpu_check] section {name} ({budget.left():.0f} s of budget left)", flush=True)
        try:
            if name == "tests":
                result["sections"]["tests"] = section_tests(args, budget, args.out)
            elif name == "throughput":
                result["sections"]["throughput"] = section_throughput(args, budget, args.out)
            elif name == "peer":
                result["sections"]["peer"] = section_throughput(args, budget, args.out, peer=True)
                result["sections"]["ratios"] = ratios(result["sections"].get("throughput", []), result["sections"]["peer"])
            elif name == "consistency":
                result["sections"]["consistency"] = section_consistency(args, budget, args.out)
            else:
                raise ValueError(f"unknown section {name!r}")
        except Exception as e:  # noqa: BLE001
            result["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    if "ratios" in result["sections"]:
        with open(os.path.join(args.out, "3_peer.md"), "a") as f:
            f.write("\n| model | precision | ours / peer step time | ours / peer peak memory | AMP speed-up |\n|---|---|---|---|---|\n")
            for r in result["sections"]["ratios"]:
                f.write(f"| {r['model']} | {r['precision']} | {r.get('step_ratio', float('nan')):.2f} | {r.get('memory_ratio', float('nan')):.2f} | {r.get('amp_speedup', float('nan')):.2f} |\n")
    print(f"[gpu_check] done in {args.budget - budget.left():.0f} s; tables in {args.out}; errors: {result['errors'] or 'none'}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
