"""The weak-shot pipeline command end to end on a tiny dataset: stage 1 (seg_crosim) -> pseudo-labels ->
retraining, a few iterations each; re-running it with the same inputs skips every finished stage, and
with other inputs re-runs them (the old outputs moved aside, never reported as the new ones)."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.data.test_weakshot_training import CLASSES, NOVEL, _write_dataset
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "configs", "synthetic", "simformer")

LAUNCHER = """
import sys
sys.path.insert(0, {repo!r})
import simformer
from simformer.data.datasets.weakshot import register_simulated_weakshot
for split in ("train", "val"):
    register_simulated_weakshot("pipe_" + split, {root!r} + "/images", {root!r} + "/full", {classes!r}, {novel!r})
import train_net
if __name__ == "__main__":
    train_net.run()
"""

TINY = tiny_model(5, queries=6) + [
    "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_POINT_NUM", "10",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.NOVEL_POINT_NUM", "10",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.HIDDEN_DIM", "16",
    "DATASETS.TRAIN", "('pipe_train',)",
    "DATASETS.TEST", "('pipe_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.CROP.SIZE", "(48, 48)",
    "INPUT.PAD_TO_SIZE", "64",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "3",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.NUM_VIS_OVERLAYS", "0",
    "TEST.AUG.MIN_SIZES", "(48, 64)",
    "TEST.AUG.MAX_SIZE", "128",
]  # fmt: skip


def test_pipeline_runs_every_stage_then_skips_them(tmp_path):
    root = str(tmp_path / "data")
    _write_dataset(root, n=4)
    launcher = str(tmp_path / "launch.py")
    with open(launcher, "w") as f:
        f.write(LAUNCHER.format(repo=REPO, root=root, classes=CLASSES, novel=NOVEL))
    run_dir = str(tmp_path / "run")
    cmd = [
        sys.executable, os.path.join(REPO, "tools", "weakshot_pipeline.py"),
        "--stage1-config", os.path.join(CONFIG_DIR, "seg_crosim.yaml"),
        "--output-dir", run_dir, "--train-script", launcher,
        *TINY, "INPUT.WEAKSHOT.PAIR_CACHE_DIR", str(tmp_path / "pairs"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for stage in ("stage1", "retrain"):
        assert os.path.isfile(os.path.join(run_dir, stage, "model_final.pth"))
        assert os.path.isfile(os.path.join(run_dir, stage, "inference", "pipe_val", "sem_seg_evaluation.pth"))
    # one pseudo-label per training image: base pixels from the labels, novel pixels only of the image's tags
    pseudo_dir = os.path.join(run_dir, "pseudo_labels")
    for name in sorted(os.listdir(os.path.join(root, "full"))):
        full = np.asarray(Image.open(os.path.join(root, "full", name)))
        pseudo = np.asarray(Image.open(os.path.join(pseudo_dir, name)))
        base = np.isin(full, [0, 1, 4])
        assert np.array_equal(pseudo[base], full[base])
        novel_in_image = set(np.unique(full[np.isin(full, [2, 3])]).tolist())
        assert set(np.unique(pseudo[~base]).tolist()) <= novel_in_image | {255}
    summary = json.load(open(os.path.join(pseudo_dir, "pseudo_labels.json")))
    assert summary["num_images"] == 4
    rows = json.load(open(os.path.join(run_dir, "summary.json")))
    assert [r["stage"].split(":")[0].split(" (")[0] for r in rows] == ["stage 1", "pseudo-labels", "retraining"]
    assert all("mIoU_novel" in r["metrics"] for r in rows)
    table = open(os.path.join(run_dir, "summary.md")).read()
    assert "| stage 1: seg_crosim |" in table and "| retraining: retraining |" in table

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("with the same inputs") == 3 and "$ " not in second.stdout  # no stage re-run

    # other inputs (here: a longer schedule) re-run every stage; the 3-iteration outputs are kept aside
    third = subprocess.run(cmd + ["SOLVER.MAX_ITER", "4"], env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "SOLVER.MAX_ITER: 3 -> 4" in third.stdout
    assert third.stdout.count("$ ") >= 3 and "with the same inputs" not in third.stdout
    for stage in ("stage1", "pseudo_labels", "retrain"):
        record = json.load(open(os.path.join(run_dir, stage, "stage.json")))
        assert record["done"] and record["config"]["SOLVER.MAX_ITER"] == 4
    stale = sorted(n for n in os.listdir(run_dir) if ".stale-" in n)
    assert [n.split(".stale-")[0] for n in stale] == ["pseudo_labels", "retrain", "stage1"]
    stage1 = json.load(open(os.path.join(run_dir, "stage1", "stage.json")))
    assert stage1["upstream"] == ""
    retrain = json.load(open(os.path.join(run_dir, "retrain", "stage.json")))
    pseudo = json.load(open(os.path.join(run_dir, "pseudo_labels", "stage.json")))
    assert retrain["upstream"] == pseudo["id"] and pseudo["upstream"] == stage1["id"]

    # test-time augmented pseudo-labels: stage 1 is kept, the pseudo-labels and the retraining are re-made
    i = cmd.index("--train-script")
    tta = subprocess.run(cmd[:i] + ["--pseudo-label-tta"] + cmd[i:] + ["SOLVER.MAX_ITER", "4"], env=env, capture_output=True, text=True, timeout=600)
    assert tta.returncode == 0, tta.stdout[-3000:] + tta.stderr[-3000:]
    assert tta.stdout.count("with the same inputs") == 1 and "TEST.AUG.PSEUDO_LABELS: False -> True" in tta.stdout
    assert json.load(open(os.path.join(run_dir, "stage1", "stage.json")))["id"] == stage1["id"]
    pseudo_tta = json.load(open(os.path.join(run_dir, "pseudo_labels", "stage.json")))
    assert pseudo_tta["config"]["TEST.AUG.PSEUDO_LABELS"] is True and pseudo_tta["upstream"] == stage1["id"]
    assert json.load(open(os.path.join(run_dir, "retrain", "stage.json")))["upstream"] == pseudo_tta["id"]


def test_multi_machine_flags_and_followers(tmp_path):
    """Every stage command carries detectron2's multi-machine flags; machines other than 0 follow machine
    0's stage.json: run along while it is unfinished, skip when it is done, wait while it is missing."""
    import json
    import threading

    import pytest

    from simformer.engine.pipeline import distributed_flags, follow_stage_dir, mark_stage_done, prepare_stage_dir

    assert distributed_flags() == []
    assert distributed_flags(2, 1, "tcp://m0:1234") == ["--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://m0:1234"]
    with pytest.raises(ValueError, match="dist-url"):
        distributed_flags(2, 1, None)
    with pytest.raises(ValueError):
        distributed_flags(2, 2, "tcp://m0:1")
    out, identity = str(tmp_path / "stage"), {"id": "abc", "config": {}}
    late = threading.Timer(0.3, lambda: prepare_stage_dir(out, identity, log=lambda m: None))
    late.start()
    assert follow_stage_dir(out, identity, poll=0.05, timeout=10) is False  # waited for machine 0, then runs
    mark_stage_done(out, identity)
    assert follow_stage_dir(out, identity, poll=0.05) is True
    assert json.load(open(os.path.join(out, "stage.json")))["done"]
    with pytest.raises(TimeoutError, match="machine 0"):
        follow_stage_dir(out, {"id": "other"}, poll=0.05, timeout=0.2)


def test_pseudo_label_tta_options():
    from simformer.tools.pipeline import pseudo_label_tta_opts

    assert pseudo_label_tta_opts(None) == []
    assert pseudo_label_tta_opts([]) == ["TEST.AUG.PSEUDO_LABELS", "True"]  # the stage-1 config's scales
    assert pseudo_label_tta_opts([96, 128]) == ["TEST.AUG.PSEUDO_LABELS", "True", "TEST.AUG.MIN_SIZES", "(96, 128)", "TEST.AUG.MAX_SIZE", "512", "TEST.AUG.FLIP", "True"]
