#!/usr/bin/env python
"""Test-time augmentation on a trained weak-shot model, in one command: evaluation and pseudo-labels with
and without TTA.

    python benchmarks/tta_eval.py --config-file configs/synthetic/simformer/seg_crosim.yaml \\
        --weights output/.../model_final.pth --output-dir output/tta [--scales 96 128 160] [--seed-name s1]

Runs (each an ``--eval-only`` of ``python -m simformer.tools.train``, 1 process):

  plain      single scale (INPUT.MIN_SIZE_TEST), no flip
  flip       single scale + horizontal flip
  ms_flip    every short side of --scales, with and without flip
  pl_plain / pl_ms_flip   pseudo-labels of the training split (TEST.PSEUDO_LABEL_DIR), scored against its
             full labels (novel IoU, coverage), without and with TTA

and appends ``{"name", "weights", "eval": {run: metrics}, "pseudo_labels": {run: quality}}`` to
``--record`` (default benchmarks/results/tta_synthetic.json; an entry of the same ``--seed-name`` is
replaced). Metrics: mIoU, base / novel mIoU, hIoU and boundary IoU (bIoU, tolerance 2 px).
"""
import argparse
import json
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("mIoU", "mIoU_base", "mIoU_novel", "hIoU", "bIoU", "bIoU_base", "bIoU_novel")


def _run(args, out, extra):
    cmd = [sys.executable, "-m", "simformer.tools.train", "--config-file", args.config_file, "--eval-only",
           "MODEL.WEIGHTS", args.weights, "TEST.NUM_VIS_OVERLAYS", "0", *extra, "OUTPUT_DIR", out]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)


def _tta(args, flip, scales):
    return ["TEST.AUG.MIN_SIZES", f"({', '.join(str(s) for s in scales)},)", "TEST.AUG.MAX_SIZE", "4000", "TEST.AUG.FLIP", str(flip)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--scales", type=int, nargs="+", default=[96, 128, 160])
    p.add_argument("--test-size", type=int, default=128, help="INPUT.MIN_SIZE_TEST of the config (the single scale)")
    p.add_argument("--train-split", default="synthetic_ws_train", help="split whose pseudo-labels are scored")
    p.add_argument("--test-split", default="synthetic_ws_val")
    p.add_argument("--seed-name", default="run")
    p.add_argument("--record", default=os.path.join(REPO, "benchmarks", "results", "tta_synthetic.json"))
    args = p.parse_args(argv)
    out = os.path.abspath(args.output_dir)
    evals = {"plain": ["TEST.AUG.ENABLED", "False"],
             "flip": ["TEST.AUG.ENABLED", "True", *_tta(args, True, [args.test_size])],
             "ms_flip": ["TEST.AUG.ENABLED", "True", *_tta(args, True, args.scales)]}  # fmt: skip
    result = {"name": args.seed_name, "config": os.path.relpath(os.path.abspath(args.config_file), REPO), "weights": args.weights,
              "scales": args.scales, "eval": {}, "pseudo_labels": {}}  # fmt: skip
    for name, extra in evals.items():
        run_dir = os.path.join(out, name)
        _run(args, run_dir, ["TEST.BOUNDARY_TOLERANCE", "2", *extra])
        m = torch.load(os.path.join(run_dir, "inference", args.test_split, "sem_seg_evaluation.pth"), weights_only=False)
        result["eval"][name] = {k: round(float(m[k]), 2) for k in KEYS if k in m}
        print(name, result["eval"][name], flush=True)
    for name, extra in {"pl_plain": [], "pl_ms_flip": ["TEST.AUG.PSEUDO_LABELS", "True", *_tta(args, True, args.scales)]}.items():
        pl_dir = os.path.join(out, name)
        _run(args, os.path.join(out, name + "_log"), ["DATASETS.TEST", f"('{args.train_split}',)", "TEST.PSEUDO_LABEL_DIR", pl_dir, *extra])
        with open(os.path.join(pl_dir, "pseudo_labels.json")) as f:
            q = json.load(f)
        result["pseudo_labels"][name] = {"novel_iou": round(q["quality_mIoU_novel"], 2), "coverage": round(q["labelled_fraction"], 2)}
        print(name, result["pseudo_labels"][name], flush=True)
    try:
        with open(args.record) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {"benchmark": "benchmarks/tta_eval.py", "runs": []}
    record["runs"] = [r for r in record["runs"] if r["name"] != args.seed_name] + [result]
    os.makedirs(os.path.dirname(args.record), exist_ok=True)
    with open(args.record, "w") as f:
        json.dump(record, f, indent=1)
    print(f"record: {args.record}")


if __name__ == "__main__":
    main()
