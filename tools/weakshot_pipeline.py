#!/usr/bin/env python
"""Run the whole weak-shot pipeline of a split: stage 1 -> pseudo-labels -> retraining, with evaluation.
The command is :mod:`simformer.tools.pipeline` (installed as ``simformer-pipeline``); see its help::

    python tools/weakshot_pipeline.py --stage1-config configs/synthetic/simformer/seg_crosim.yaml \
        --output-dir output/pipeline/synthetic [--retrain-config ...] [--retrain-init scratch|stage1] [KEY VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simformer.tools.pipeline import main  # noqa: E402

if __name__ == "__main__":
    main()
