#!/usr/bin/env python
"""Train / evaluate simformer models with detectron2's trainer (kept for detectron2 habits; the code is
:mod:`simformer.engine.launch`, also installed as ``simformer-train``).

    python train_net.py --config-file configs/synthetic/maskformer_R18_fully_supervised.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)

A script that registers its own datasets first can end with ``train_net.run()`` (or
``simformer.engine.launch.run()``) and be given to the pipeline as ``--train-script``.
"""
import simformer  # noqa: F401  (applies d2compat, fills registries)
from simformer.engine.launch import main, run, setup  # noqa: F401

if __name__ == "__main__":
    run()
