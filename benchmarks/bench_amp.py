#!/usr/bin/env python
"""bf16 autocast (``SOLVER.AMP.ENABLED True``) against fp32: training step and inference time of the same
model side by side in one process (interleaved rounds, median and range of the per-round ratio).

    python benchmarks/bench_amp.py [--model r50|synthetic] [--size 256] [--batch 2] [--rounds 6] [--threads 2]

``r50``: MaskFormer-R50 (configs/maskformer/maskformer_R50.yaml, random init, 100 queries, 6 decoder
layers, K = 171); ``synthetic``: the synthetic benchmark's R18 masked-attention model
(configs/synthetic/mask2former_R18_fully_supervised.yaml, 12 classes). Both models start from the same
weights; inputs are random images with block label maps (``_measure.maskformer_batch``). Speed only: the
accuracy effect needs a benchmark row trained with the option (README, "bf16 autocast on CPU").
Writes ``benchmarks/results/amp_bf16_<model>_<size>[_bf16native].json`` unless ``--no-record``; the
record names the CPU's bf16 capability (``cpu_bf16``), and a machine with native bf16 kernels writes its
own file (suffix ``_bf16native``) so that measurements from the two kinds of CPU are kept side by side.
"""
import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _measure import REPO, autocast_of, build_cfg, interleaved, machine_note, maskformer_batch, median, r50_opts, set_threads, train_step_fn  # noqa: E402

MODELS = {
    "r50": (os.path.join(REPO, "configs", "maskformer", "maskformer_R50.yaml"), 171),
    "synthetic": (os.path.join(REPO, "configs", "synthetic", "mask2former_R18_fully_supervised.yaml"), 12),
}


def inference_fn(model, autocast, image, size):
    """One eval-mode forward of ``image`` under ``autocast`` (the trainer's SOLVER.AMP context); the model
    is put back in training mode for the interleaved training steps."""

    def run():
        model.eval()
        with torch.no_grad(), autocast():
            model([{"image": image, "height": size, "width": size}])
        model.train()

    return run


def cpu_bf16_note() -> dict:
    """What decides CPU bf16 speed: PyTorch's vector ISA and whether oneDNN has native bf16 kernels."""
    from simformer.engine.amp import cpu_has_native_bf16

    return {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="r50")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (each times both), after 1 warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="do not write the JSON record")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    config, num_classes = MODELS[args.model]
    opts = r50_opts(num_classes) if args.model == "r50" else ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    torch.manual_seed(0)
    data = maskformer_batch(args.batch, args.size, num_classes)
    cpu = torch.device("cpu")
    steps, infers, state = {}, {}, None
    for name, amp in (("fp32", False), ("bf16", True)):
        cfg = build_cfg(config, opts + ["SOLVER.AMP.ENABLED", str(amp)])
        model = build_model(cfg)
        if state is None:
            state = copy.deepcopy(model.state_dict())
        model.load_state_dict(state)
        model.train()
        steps[name] = train_step_fn(model, build_optimizer(cfg, model), data, cfg)
        infers[name] = inference_fn(model, autocast_of(cfg, cpu)[0], data[0]["image"], args.size)
    print(machine_note(threads))
    print(f"{args.model}: {args.batch} x {args.size}² per training step, {args.rounds} interleaved rounds")
    train = interleaved(steps, args.rounds, 1, cpu)
    inference = interleaved(infers, args.rounds, 1, cpu)
    result = {"model": args.model, "config": os.path.relpath(config, REPO), "size": args.size, "batch": args.batch,
              "threads": threads, "rounds": args.rounds, "machine": machine_note(threads), "cpu_bf16": cpu_bf16_note()}  # fmt: skip
    for what, times in (("train_step", train), ("inference", inference)):
        ratios = [b / a for a, b in zip(times["fp32"]["wall"], times["bf16"]["wall"])]
        result[what] = {
            "fp32_s": round(median(times["fp32"]["wall"]), 4),
            "bf16_s": round(median(times["bf16"]["wall"]), 4),
            "ratio_bf16_over_fp32_median": round(median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        }
        r = result[what]
        print(f"{what:>10}: fp32 {r['fp32_s']:.3f} s, bf16 {r['bf16_s']:.3f} s, bf16 / fp32 {r['ratio_bf16_over_fp32_median']:.2f} "
              f"(per round {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})")  # fmt: skip
    if not args.no_record:
        suffix = "_bf16native" if result["cpu_bf16"]["native_bf16"] else ""
        out = os.path.join(REPO, "benchmarks", "results", f"amp_bf16_{args.model}_{args.size}{suffix}.json")
        with open(out + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(out + ".tmp", out)
        print(f"record: {os.path.relpath(out, REPO)}")


if __name__ == "__main__":
    main()
