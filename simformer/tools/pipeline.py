"""``simformer-pipeline``: the whole weak-shot pipeline of a split, stage 1 -> pseudo-labels -> retraining,
each evaluated (also ``python tools/weakshot_pipeline.py``)::

    simformer-pipeline --stage1-config configs/synthetic/simformer/seg_crosim.yaml \\
        --output-dir output/pipeline/synthetic [--retrain-config ...] [--retrain-init scratch|stage1] [--num-gpus N] [KEY VALUE ...]

``--retrain-config`` defaults to ``retraining.yaml`` next to the stage-1 config. Each stage records its
inputs (``stage.json``): re-running the command with the same inputs skips finished stages and resumes an
interrupted one; with other inputs (config, overrides, a re-run upstream stage) the stage's old output is
moved to ``<stage>.stale-<time>`` and the stage and everything after it run again. Trailing KEY VALUE pairs
override every stage's config.
"""
import argparse
import os

import simformer  # noqa: F401  (detectron2 compatibility patches, registries)
from simformer.engine.pipeline import RETRAIN_INITS, run_pipeline

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="simformer-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1-config", required=True, help="seg, seg_crosim or seg_ssa config of the split")
    parser.add_argument("--retrain-config", default="", help="retraining config (default: retraining.yaml next to the stage-1 config)")
    parser.add_argument("--output-dir", required=True, help="run folder holding every stage's output")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per stage (GPUs, or CPU processes with MODEL.DEVICE cpu)")
    parser.add_argument("--train-script", default="", help="script with train_net.py's flags that registers your own datasets first (default: python -m simformer.tools.train)")
    parser.add_argument("--retrain-init", choices=RETRAIN_INITS, default="scratch",
                        help="retraining starts from a fresh model (scratch, the paper) or from stage 1's weights")  # fmt: skip
    parser.add_argument("--num-machines", type=int, default=1, help="machines (detectron2's flag, passed to every stage)")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank; run the same command on every machine")
    parser.add_argument("--dist-url", default=None, help="tcp://<machine 0>:<port> for several machines")
    parser.add_argument("--pseudo-label-tta", nargs="*", type=int, default=None, metavar="SHORT_SIDE",
                        help="pseudo-labels with test-time augmentation, flip + these short sides (none given: the stage-1 config's TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP), score maps averaged; stage 1 is not affected")  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every stage")
    args = parser.parse_args(argv)
    retrain = args.retrain_config or os.path.join(os.path.dirname(args.stage1_config), "retraining.yaml")
    for path in (args.stage1_config, retrain):
        if not os.path.isfile(path):
            parser.error(f"config file {path!r} does not exist")
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    run_pipeline(args.stage1_config, retrain, args.output_dir, num_gpus=args.num_gpus, opts=args.opts,
                 train_script=args.train_script or None, retrain_init=args.retrain_init,
                 num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
                 pseudo_label_opts=pseudo_label_tta_opts(args.pseudo_label_tta))  # fmt: skip


def pseudo_label_tta_opts(sizes):
    """``--pseudo-label-tta [SHORT_SIDE ...]`` -> the pseudo-label stage's overrides (None = no TTA)."""
    if sizes is None:
        return []
    opts = ["TEST.AUG.PSEUDO_LABELS", "True"]
    if sizes:
        if min(sizes) < 1:
            raise SystemExit(f"--pseudo-label-tta: short sides must be positive, got {sizes}")
        opts += ["TEST.AUG.MIN_SIZES", str(tuple(sizes)), "TEST.AUG.MAX_SIZE", str(4 * max(sizes)), "TEST.AUG.FLIP", "True"]
    return opts


if __name__ == "__main__":
    main()
