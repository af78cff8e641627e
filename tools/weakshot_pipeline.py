#!/usr/bin/env python
"""Run the whole weak-shot pipeline of a split: stage 1 -> pseudo-labels -> retraining, with evaluation.

    python tools/weakshot_pipeline.py --stage1-config configs/synthetic/simformer/seg_crosim.yaml \
        --output-dir output/pipeline/synthetic [--retrain-config ...] [--num-gpus N] [KEY VALUE ...]

``--retrain-config`` defaults to ``retraining.yaml`` next to the stage-1 config. Stages whose output
exists are skipped, so re-running the command finishes an interrupted pipeline. Trailing KEY VALUE pairs
override every stage's config.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import simformer  # noqa: E402,F401  (detectron2 compatibility patches, registries)
from simformer.engine.pipeline import run_pipeline  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-config", required=True, help="seg or seg_crosim config of the split")
    parser.add_argument("--retrain-config", default="", help="retraining config (default: retraining.yaml next to the stage-1 config)")
    parser.add_argument("--output-dir", required=True, help="run folder holding every stage's output")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per stage (GPUs, or CPU processes with MODEL.DEVICE cpu)")
    parser.add_argument("--train-script", default="", help="script with train_net.py's flags that registers your own datasets first (default: train_net.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every stage")
    args = parser.parse_args(argv)
    retrain = args.retrain_config or os.path.join(os.path.dirname(args.stage1_config), "retraining.yaml")
    for path in (args.stage1_config, retrain):
        if not os.path.isfile(path):
            parser.error(f"config file {path!r} does not exist")
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    run_pipeline(args.stage1_config, retrain, args.output_dir, num_gpus=args.num_gpus, opts=args.opts, train_script=args.train_script or None)


if __name__ == "__main__":
    main()
