"""``simformer-train``: ``train_net.py``'s command line as a console script (:mod:`simformer.engine.launch`).

    simformer-train --config-file configs/synthetic/maskformer_R18_fully_supervised.yaml [--eval-only ...]
"""
import simformer  # noqa: F401  (d2compat patches and registries)
from simformer.engine.launch import run

__all__ = ["main"]


def main(argv=None):
    run(argv)


if __name__ == "__main__":
    main()
