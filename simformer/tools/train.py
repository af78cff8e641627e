"""``simformer-train``: ``train_net.py``'s command line as a console script (editable installs).

    simformer-train --config-file configs/synthetic/maskformer_R18_fully_supervised.yaml [--eval-only ...]
"""
import importlib.util
import os

__all__ = ["main"]

TRAIN_NET = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train_net.py")


def main(argv=None):
    if not os.path.isfile(TRAIN_NET):
        raise SystemExit(f"simformer-train: {TRAIN_NET} not found; install the repository in editable mode (pip install -e .) or run train_net.py")
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(argv)


if __name__ == "__main__":
    main()
