#!/usr/bin/env python
"""Losses of a fixed batch for the main configs: run it before and after a refactor (e.g. from two
``git worktree`` checkouts with ``PYTHONPATH`` pointing at each) and compare the JSON files::

    python benchmarks/fixed_batch_losses.py --output before.json
    python benchmarks/fixed_batch_losses.py --output after.json --compare before.json

Every config is built with the same seed and fed the same two (pairs of) training images of a weak-shot
split registered here on the fully labelled synthetic data (novel = triangle, cross, arrow), so the
result does not depend on the built-in splits. Pinned overrides (the standard query decoder, the
synthetic R18 widths) keep the comparison independent of later changes to the benchmark protocol.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import simformer  # noqa: E402,F401
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from simformer import add_simformer_config  # noqa: E402
from simformer.data.dataset_mappers import build_mapper  # noqa: E402
from simformer.data.datasets.synthetic import SYNTHETIC_CLASSES, default_synthetic_root, ensure_synthetic_dataset  # noqa: E402
from simformer.data.datasets.weakshot import register_simulated_weakshot  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "maskformer": "configs/synthetic/maskformer_R18_fully_supervised.yaml",
    "seg": "configs/synthetic/simformer/seg.yaml",
    "seg_crosim": "configs/synthetic/simformer/seg_crosim.yaml",
    "seg_ssa": "configs/synthetic/simformer/seg_ssa.yaml",
    "seg_best": "configs/synthetic/simformer/seg_best.yaml",
}
PINNED = [
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "StandardTransformerDecoder",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "128", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "20", "MODEL.MASK_FORMER.DEC_LAYERS", "6",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "512", "MODEL.MASK_FORMER.DROPOUT", "0.0",
    "DATALOADER.NUM_WORKERS", "0", "INPUT.WEAKSHOT.PAIR_CACHE_DIR", "",
]  # fmt: skip
NAME = "fixed_batch_ws_train"


def _register():
    root = ensure_synthetic_dataset(default_synthetic_root())
    if NAME not in DatasetCatalog.list():
        register_simulated_weakshot(NAME, os.path.join(root, "images", "train"), os.path.join(root, "labels", "train"), SYNTHETIC_CLASSES, [5, 8, 11])


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def losses_of(config):
    cfg = get_cfg()
    add_simformer_config(cfg)
    from simformer.utils.config_merge import merge_config

    merge_config(cfg, os.path.join(REPO, config), PINNED + ["DATASETS.TRAIN", f"('{NAME}',)"])
    if cfg.MODEL.META_ARCHITECTURE == "MaskFormer":
        cfg.INPUT.DATASET_MAPPER_NAME = "SemSegDatasetMapper"
    _seed(0)
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(NAME)[:2]
    _seed(1)
    batch = [mapper(d) for d in dicts]
    _seed(2)
    model = build_model(cfg)
    model.train()
    _seed(3)
    with torch.no_grad():
        out = model(batch)
    return {k: float(v) for k, v in sorted(out.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--compare", default="", help="a JSON file of an earlier run: print the largest differences")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _register()
    result = {name: losses_of(config) for name, config in CONFIGS.items()}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{sum(len(v) for v in result.values())} loss terms of {len(result)} configs -> {args.output}")
    if args.compare:
        before = json.load(open(args.compare))
        worst = 0.0
        for name, terms in result.items():
            old = before.get(name, {})
            if set(old) != set(terms):
                print(f"{name}: loss terms differ: only before {sorted(set(old) - set(terms))}, only now {sorted(set(terms) - set(old))}")
            diffs = {k: abs(terms[k] - old[k]) for k in terms if k in old}
            worst_here = max(diffs.values(), default=0.0)
            worst = max(worst, worst_here)
            print(f"{name}: {len(diffs)} terms, largest |difference| {worst_here:.3g}")
        print(f"largest |difference| over all configs: {worst:.3g} ({'identical' if worst == 0 else 'NOT identical'})")


if __name__ == "__main__":
    main()
