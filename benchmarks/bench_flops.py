#!/usr/bin/env python
"""Achieved FLOP/s of our model's training step and inference against the machine's dense fp32 matmul rate.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_flops.py   # R18 synthetic + R50 at 512, CPU
    python benchmarks/bench_flops.py --cases r50-512 --threads 8 --steps 5
    python benchmarks/bench_flops.py --quick                               # smoke run, tiny sizes
    python benchmarks/bench_flops.py --cases r50-512 MODEL.DEVICE cuda

Cases (``--cases``): ``r18-synthetic`` = configs/synthetic/maskformer_R18_fully_supervised.yaml at its crop
size and batch (96x96, 8 images); ``r50-512`` = configs/maskformer/maskformer_R50.yaml from random init with
trainable BN, 512x512, batch 2, K = 171. Trailing ``KEY VALUE`` pairs override both configs.

FLOP convention: fvcore's ``FlopCountAnalysis`` counts one multiply-add as one "flop"; this script reports
FLOPs = 2 x that count, the convention of the matmul rate (2 n^3 per n x n product). Counted ops are
fvcore's defaults (conv, matmul / linear / einsum, norms, upsampling); element-wise ops are not counted.
  * inference = the whole model in eval mode (traced on one image through the list-of-dicts interface,
    post-processing to the input size included), batch 1;
  * training = 3 x the forward pass of backbone + head in training mode at the training batch (deep
    supervision: every decoder layer's mask prediction), i.e. backward ~ 2 x forward; the matcher, the
    losses and the optimizer step are not counted (their time is in the measured step).
The peak is the best dense fp32 rate with the same threads over three kernels (``matmul_throughput``:
``torch.mm`` on ``--matmul-size`` square matrices, the same product as a 1x1 convolution, a 3x3 convolution
like the pixel decoder's), each measured at the start and the end of the run; achieved fraction = (FLOPs /
median time) / peak. The same fraction is also given per process CPU second (FLOPs / CPU seconds against
the kernels' FLOPs per CPU second), which a shared machine disturbs less than wall-clock time. A fraction
near or above 1 means the step runs at the rate of the best dense kernel (oneDNN may pick Winograd for
3x3 convolutions, which does fewer multiplications than fvcore counts).

On a shared machine keep OMP_WAIT_POLICY=PASSIVE: with more busy processes than cores, OpenMP's default
spinning wait made 2-thread steps up to 50x slower here (see ``_measure.machine_note``).
"""
import argparse
import os
import sys
from typing import Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure as M  # noqa: E402

CASES = ("r18-synthetic", "r50-512")


# ---------------------------------------------------------------- peak
def matmul_throughput(n: int = 2048, repeats: int = 5, device: torch.device = torch.device("cpu")) -> Dict[str, Dict[str, float]]:
    """Dense fp32 rates in FLOP/s, median of ``repeats`` after one warm-up, of three kernels: ``torch.mm`` of
    n x n matrices (2 n^3 FLOPs), the same product as a 1 x 1 convolution of an n-channel 64 x 64 map, and a
    3 x 3 convolution of n/8 channels on a 128 x 128 map (n = 2048: 256 channels, the pixel decoder's
    largest layer). On CPU the convolutions run in oneDNN, which may use wider vector units than the BLAS
    behind ``torch.mm``. Each: {"wall": per wall-clock second, "cpu": per process CPU second}."""
    c = max(n // 8, 1)
    a, b, out = torch.randn(n, n, device=device), torch.randn(n, n, device=device), torch.empty(n, n, device=device)
    x1, w1 = torch.randn(1, n, 64, 64, device=device), torch.randn(n, n, 1, 1, device=device)
    x3, w3 = torch.randn(1, c, 128, 128, device=device), torch.randn(c, c, 3, 3, device=device)
    conv2d = torch.nn.functional.conv2d
    kernels = {
        "torch.mm": (lambda: torch.mm(a, b, out=out), 2 * n**3),
        "1x1 conv": (lambda: conv2d(x1, w1), 2 * n * n * 64 * 64),
        "3x3 conv": (lambda: conv2d(x3, w3, padding=1), 2 * c * c * 9 * 128 * 128),
    }
    rates = {}
    with torch.no_grad():
        for name, (fn, flops) in kernels.items():
            times = M.interleaved({name: fn}, repeats, 1, device)[name]
            rates[name] = {"wall": flops / M.median(times["wall"]), "cpu": flops / M.median(times["cpu"])}
    return rates


def peak_of(*measurements: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """The best rate over kernels and repeated measurements, separately for "wall" and "cpu"."""
    return {k: max(r[k] for m in measurements for r in m.values()) for k in ("wall", "cpu")}


# ---------------------------------------------------------------- FLOP counts
class _TrainingForward(nn.Module):
    """backbone + head of a MaskFormer-style model on a normalised, padded image tensor; the head's
    output tensors flattened to a tuple (what the tracer needs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        out = self.model.sem_seg_head(self.model.backbone(images))
        tensors = [out["pred_logits"], out["pred_masks"]]
        for aux in out.get("aux_outputs", []):
            tensors += [aux["pred_logits"], aux["pred_masks"]]
        return tuple(tensors)


class _Inference(nn.Module):
    """The whole model in eval mode on one uint8 image tensor -> its ``sem_seg`` scores."""

    def __init__(self, model, height, width):
        super().__init__()
        self.model, self.height, self.width = model, height, width

    def forward(self, image):
        return self.model([{"image": image, "height": self.height, "width": self.width}])[0]["sem_seg"]


def _quiet(analysis):
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")


def training_forward_flops(model, data) -> float:
    """FLOPs (2 x multiply-adds) of one training-mode forward of backbone + head on ``data``."""
    from fvcore.nn import FlopCountAnalysis

    batched = model.flatten_pairs(data) if hasattr(model, "flatten_pairs") else data
    was_training = model.training
    model.train()
    images = model.preprocess_image(batched).tensor
    state = {k: v.clone() for k, v in model.state_dict().items()}  # the traced forward updates BN statistics
    with torch.no_grad():
        count = _quiet(FlopCountAnalysis(_TrainingForward(model), (images,))).total()
    model.load_state_dict(state)
    model.train(was_training)
    return 2.0 * count


def inference_flops(model, inputs) -> float:
    """FLOPs (2 x multiply-adds) of the whole model in eval mode on ``inputs`` (list of dicts)."""
    from fvcore.nn import FlopCountAnalysis

    if len(inputs) != 1:
        raise ValueError(f"inference_flops: one input image expected, got {len(inputs)}")
    x = inputs[0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        count = _quiet(FlopCountAnalysis(_Inference(model, x["height"], x["width"]), (x["image"],))).total()
    model.train(was_training)
    return 2.0 * count


# ---------------------------------------------------------------- one case
def case_setup(name: str, quick: bool, opts: List[str]):
    """(config file, opts, size, batch) of a named case; quick = tiny sizes for a smoke run."""
    if name == "r18-synthetic":
        cfg = M.build_cfg(M.R18_SYNTHETIC_CONFIG, opts)
        size, batch = int(cfg.INPUT.CROP.SIZE[0]), cfg.SOLVER.IMS_PER_BATCH
        return M.R18_SYNTHETIC_CONFIG, list(opts), (64 if quick else size), (2 if quick else batch)
    if name == "r50-512":
        return M.R50_CONFIG, M.r50_opts(171) + list(opts), (64 if quick else 512), (1 if quick else 2)
    raise ValueError(f"unknown case {name!r}; expected one of {CASES}")


def measure_case(config_file: str, opts: List[str], size: int, batch: int, steps: int, warmup: int) -> Dict:
    """Build the model, count FLOPs, time the training step and inference (medians). Returns a dict with
    train_flops, train_s, infer_flops, infer_s, params, config, size, batch, device."""
    import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    cfg = M.build_cfg(config_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    data = M.maskformer_batch(batch, size, k, classes_per_image=min(8, k))
    single = M.inference_inputs(data)

    train_flops = 3.0 * training_forward_flops(model, data)
    infer_flops = inference_flops(model, single)

    def infer():
        model.eval()
        with torch.no_grad():
            model(single)
        model.train()

    device = model.device
    train = M.interleaved({"train": M.train_step_fn(model, optimizer, data, cfg)}, steps, warmup, device)["train"]
    inference = M.interleaved({"infer": infer}, steps, warmup, device)["infer"]
    return {
        "config": os.path.relpath(config_file, M.REPO), "size": size, "batch": batch, "device": str(device),
        "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "train_flops": train_flops, "train_s": M.median(train["wall"]), "train_cpu_s": M.median(train["cpu"]),
        "infer_flops": infer_flops, "infer_s": M.median(inference["wall"]), "infer_cpu_s": M.median(inference["cpu"]),
    }  # fmt: skip


def fractions(result: Dict, peak: Dict[str, float]) -> Dict[str, float]:
    """Achieved FLOP/s and fraction of the peak (:func:`matmul_throughput`) for training and inference of a
    :func:`measure_case` result: per wall-clock second against the wall peak, and per process CPU second
    against the peak per CPU second (steadier on a shared machine: time waiting for a core is not counted)."""
    out = {}
    for mode in ("train", "infer"):
        rate = result[f"{mode}_flops"] / result[f"{mode}_s"]
        cpu_rate = result[f"{mode}_flops"] / result[f"{mode}_cpu_s"]
        out.update({f"{mode}_rate": rate, f"{mode}_fraction": rate / peak["wall"], f"{mode}_cpu_fraction": cpu_rate / peak["cpu"]})
    return out


# ---------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps / inferences per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed ones first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: OMP_NUM_THREADS / torch default)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 matmul peak")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64x64 inputs, 1 step, small matmul")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (both cases)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.matmul_size = 1, 1, min(args.matmul_size, 512)
    threads = M.set_threads(args.threads)
    device = torch.device(M.build_cfg(M.R18_SYNTHETIC_CONFIG, args.opts).MODEL.DEVICE)

    peak_start = matmul_throughput(args.matmul_size, device=device)
    results = []
    for name in args.cases:
        config_file, opts, size, batch = case_setup(name, args.quick, args.opts)
        results.append((name, measure_case(config_file, opts, size, batch, args.steps, args.warmup)))
    peak_end = matmul_throughput(args.matmul_size, device=device)
    peak = peak_of(peak_start, peak_end)

    where = f"CPU, {M.machine_note(threads)}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"achieved FLOP/s vs dense fp32 matmul; {where}")
    rates = "; ".join(f"{k} {peak_start[k]['wall'] / 1e9:.1f} / {peak_end[k]['wall'] / 1e9:.1f}" for k in peak_start)
    print(f"peak (fp32, n = {args.matmul_size}, GFLOP/s at start / end): {rates}; using the best, {peak['wall'] / 1e9:.1f} "
          f"(per CPU second: {peak['cpu'] / 1e9:.1f})")
    print("FLOPs = 2 x fvcore multiply-adds; training = 3 x training-mode forward of backbone + head (matcher, losses, "
          f"optimizer not counted); inference = whole eval model, batch 1; median of {args.steps} after {args.warmup} warm-up\n")
    print(f"{'case':15}{'input':>14}{'params':>9}{'':3}{'GFLOP':>10}{'time (s)':>10}{'GFLOP/s':>10}{'of peak':>9}{'CPU (s)':>9}{'of peak (CPU time)':>20}")
    for name, r in results:
        f = fractions(r, peak)
        inp = f"{r['batch']}x{r['size']}^2"
        print(f"{name:15}{inp:>14}{r['params'] / 1e6:8.1f}M")
        print(f"{'  training':15}{'':14}{'':9}{'':3}{r['train_flops'] / 1e9:10.1f}{r['train_s']:10.3f}{f['train_rate'] / 1e9:10.1f}{f['train_fraction']:9.1%}{r['train_cpu_s']:9.3f}{f['train_cpu_fraction']:20.1%}")
        print(f"{'  inference':15}{'1x' + str(r['size']) + '^2':>14}{'':9}{'':3}{r['infer_flops'] / 1e9:10.1f}{r['infer_s']:10.3f}{f['infer_rate'] / 1e9:10.1f}{f['infer_fraction']:9.1%}{r['infer_cpu_s']:9.3f}{f['infer_cpu_fraction']:20.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
