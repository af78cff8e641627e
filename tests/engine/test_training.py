"""End-to-end training on a tiny dataset: a run killed mid-way resumes from its last checkpoint,
--eval-only reproduces the final metrics, and two CPU processes (gloo) train together."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIG = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")

LAUNCHER = """
import sys
sys.path.insert(0, {repo!r})
import simformer
from simformer.data.datasets.folder import register_sem_seg_folder
for split in ("train", "val"):
    register_sem_seg_folder("tiny_" + split, {root!r} + "/images/" + split, {root!r} + "/labels/" + split, ["a", "b", "c"])
import train_net
if __name__ == "__main__":
    train_net.run()
"""

TINY = tiny_model(3, queries=5) + [
    "DATASETS.TRAIN", "('tiny_train',)",
    "DATASETS.TEST", "('tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.PAD_TO_SIZE", "64",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.NUM_VIS_OVERLAYS", "0",
]


def _write_tiny_dataset(root, n_train=6, n_val=2, size=64):
    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("val", n_val)):
        os.makedirs(f"{root}/images/{split}", exist_ok=True)
        os.makedirs(f"{root}/labels/{split}", exist_ok=True)
        for i in range(n):
            label = np.zeros((size, size), np.uint8)
            label[:, size // 2 :] = 1
            y, x = rng.randint(8, size - 24, 2)
            label[y : y + 16, x : x + 16] = 2
            image = (np.stack([label * 80, 255 - label * 60, rng.randint(0, 50, (size, size))], -1)).astype(np.uint8)
            Image.fromarray(image).save(f"{root}/images/{split}/{i:03d}.png")
            Image.fromarray(label).save(f"{root}/labels/{split}/{i:03d}.png")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_data"))
    _write_tiny_dataset(root)
    launcher = os.path.join(root, "run_tiny.py")
    with open(launcher, "w") as f:
        f.write(LAUNCHER.format(repo=REPO, root=root))
    return launcher


def _cmd(launcher, out_dir, *extra, opts=()):
    return [sys.executable, launcher, "--config-file", BASE_CONFIG, *extra, *TINY, "OUTPUT_DIR", out_dir, *opts]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _iterations(out_dir):
    """Iterations of the training records of metrics.json (evaluation records are skipped)."""
    with open(os.path.join(out_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r["iteration"] for r in records if "total_loss" in r]


def test_killed_training_resumes_from_last_checkpoint(tiny, tmp_path):
    out = str(tmp_path / "run")
    opts = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "3"]
    proc = subprocess.Popen(_cmd(tiny, out, opts=opts), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = os.path.join(out, "model_0000005.pth")
    deadline = time.time() + 240
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert os.path.exists(ckpt), "no checkpoint written before the deadline"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # a hard kill mid-run
    proc.wait()
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint")) as f:
        last = f.read().strip()
    last_iter = int(last.split("_")[1].split(".")[0])
    assert last_iter >= 5

    result = subprocess.run(_cmd(tiny, out, "--resume", opts=opts), env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"Loading from {os.path.join(out, last)}" in log
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    # the resumed run starts right after the checkpoint's iteration, not from 0
    resumed = [it for it in _iterations(out) if it > last_iter]
    assert resumed and min(resumed) <= last_iter + 20 and max(resumed) == 39
    starts = [line for line in log.splitlines() if "Starting training from iteration" in line]
    assert starts and starts[-1].strip().endswith(f"iteration {last_iter + 1}")


def test_eval_only_reproduces_final_metrics(tiny, tmp_path):
    out = str(tmp_path / "run")
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100"]
    train = subprocess.run(_cmd(tiny, out, opts=opts), env=_env(), capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    import torch

    final = torch.load(os.path.join(out, "inference", "tiny_val", "sem_seg_evaluation.pth"), weights_only=False)
    os.replace(os.path.join(out, "inference", "tiny_val", "sem_seg_evaluation.pth"), os.path.join(out, "train_eval.pth"))
    evaluate = subprocess.run(_cmd(tiny, out, "--eval-only", opts=opts + ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")]), env=_env(), capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    again = torch.load(os.path.join(out, "inference", "tiny_val", "sem_seg_evaluation.pth"), weights_only=False)
    assert set(final) == set(again)
    for k in final:
        assert (np.isnan(final[k]) and np.isnan(again[k])) or final[k] == again[k], k


def test_two_cpu_processes_train_with_gloo(tiny, tmp_path):
    out = str(tmp_path / "ddp")
    opts = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.DEVICE", "cpu"]
    result = subprocess.run(_cmd(tiny, out, "--num-gpus", "2", opts=opts), env=_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    log = result.stdout + result.stderr
    assert "world size: 2" in log.lower() or "rank 1" in log.lower()
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    assert _iterations(out)[-1] == 2


def test_writers_without_tensorboard(tmp_path, monkeypatch):
    """Without the tensorboard package (the GPU image has none) training still writes metrics.json and
    the console log instead of failing at start."""
    from types import SimpleNamespace

    import detectron2.utils.events as events

    from simformer.engine import Trainer

    owner = SimpleNamespace(max_iter=3, cfg=SimpleNamespace(OUTPUT_DIR=str(tmp_path / "new")))  # created
    kinds = [type(w).__name__ for w in Trainer.build_writers(owner)]
    assert kinds == ["CommonMetricPrinter", "JSONWriter", "TensorboardXWriter"]

    def no_tensorboard(*a, **k):
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setattr(events, "TensorboardXWriter", no_tensorboard)
    assert [type(w).__name__ for w in Trainer.build_writers(owner)] == ["CommonMetricPrinter", "JSONWriter"]
