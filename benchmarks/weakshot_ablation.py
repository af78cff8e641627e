#!/usr/bin/env python
"""The weak-shot ablation table on the synthetic split, with one command (tens of minutes on a CPU):

    python benchmarks/weakshot_ablation.py [--output-dir output/ablation] [--num-gpus N] [KEY VALUE ...]

Rows (same model and schedule, configs/synthetic/simformer/):
  (a) oracle: novel classes with pixel labels          (oracle.yaml)
  (b) base-only: novel classes unseen                  (base_only.yaml)
  (c) proposal-pixel transfer                          (seg_no_comp.yaml)
  (d) (c) + complementary loss                         (seg.yaml)
  (e) (d) + pixel-pixel similarity transfer            (seg_crosim.yaml)
  (f) (e) + pseudo-labels + retraining                 (tools/weakshot_pipeline.py: seg_crosim -> retraining.yaml)
Finished rows are skipped, so re-running completes an interrupted table. Prints the table and the two
targets: novel mIoU of (f) >= 0.6 x the oracle's, base mIoU of (f) within 5 points of the oracle's.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import simformer  # noqa: E402,F401
from simformer.engine.pipeline import METRIC_KEYS, REPO, run_pipeline, stage_metrics  # noqa: E402

CONFIGS = os.path.join(REPO, "configs", "synthetic", "simformer")
ROWS = [
    ("a", "oracle (novel pixel labels)", "oracle.yaml"),
    ("b", "base-only (novel unseen)", "base_only.yaml"),
    ("c", "proposal-pixel transfer", "seg_no_comp.yaml"),
    ("d", "(c) + complementary loss", "seg.yaml"),
]
TEST_SET = "synthetic_ws_val"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/ablation")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--rows", default="abcdef", help="subset of rows to run, e.g. 'af'")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.output_dir)
    results, minutes = {}, {}
    for key, label, config in ROWS:
        if key not in args.rows:
            continue
        run_dir = os.path.join(out, os.path.splitext(config)[0])
        if stage_metrics(run_dir, TEST_SET) is None:
            print(f"==> ({key}) {label}: training {config}", flush=True)
            start = time.perf_counter()
            cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", str(args.num_gpus), "--resume",
                   "--config-file", os.path.join(CONFIGS, config), *args.opts, "OUTPUT_DIR", run_dir]  # fmt: skip
            subprocess.run(cmd, check=True, cwd=REPO)
            minutes[key] = (time.perf_counter() - start) / 60
        results[key] = stage_metrics(run_dir, TEST_SET)
    if "e" in args.rows or "f" in args.rows:
        rows = run_pipeline(os.path.join(CONFIGS, "seg_crosim.yaml"), os.path.join(CONFIGS, "retraining.yaml"), os.path.join(out, "pipeline"), args.num_gpus, args.opts)
        results["e"], results["f"] = rows[0]["metrics"], rows[2]["metrics"]
        minutes["e"], minutes["f"] = rows[0]["seconds"] and rows[0]["seconds"] / 60, rows[2]["seconds"] and rows[2]["seconds"] / 60
    labels = dict((k, lab) for k, lab, _ in ROWS) | {"e": "(d) + pixel-pixel similarity transfer", "f": "(e) + pseudo-labels + retraining"}
    lines = ["| row | setting | mIoU | base mIoU | novel mIoU | hIoU | minutes |", "|---|---|---|---|---|---|---|"]
    for key in "abcdef":
        if key in results and results[key]:
            m = results[key]
            cells = " | ".join(f"{m[k]:.1f}" for k in METRIC_KEYS)
            mins = f"{minutes[key]:.1f}" if minutes.get(key) else "done before"
            lines.append(f"| ({key}) | {labels[key]} | {cells} | {mins} |")
    table = "\n".join(lines)
    print("\n" + table)
    if results.get("a") and results.get("f"):
        a, f = results["a"], results["f"]
        ratio = f["mIoU_novel"] / max(a["mIoU_novel"], 1e-9)
        print(f"\n(f) novel / oracle novel = {ratio:.2f} (target >= 0.6); base gap = {a['mIoU_base'] - f['mIoU_base']:.1f} points (target <= 5)")
    with open(os.path.join(out, "ablation.md"), "w") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
