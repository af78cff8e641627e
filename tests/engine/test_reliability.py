"""Training reliability on the tiny dataset of test_training.py:

* resume equivalence: a run SIGKILLed at iteration 3 and resumed (--resume) reproduces every loss term of
  the uninterrupted run at every iteration -- asserted to a relative 1e-6 (on CPU it is bit-exact) -- for
  MaskFormer and for SimFormer with SimNet (pair mapper, random point sampling, running pair balance);
* distributed: 2 CPU processes (gloo) with SOLVER.IMS_PER_BATCH 2 match 1 process with 2 within a
  relative 1e-5 per iteration over 3 iterations (observed ~2e-7; backbone FrozenBN and a GN head, so no
  per-process batch statistics; every tiny image holds all 3 classes, so the per-process CE
  normalisation equals the global one);
* the training loader gives the same samples (data order, augmentations, pair partners) for any number
  of processes and any start iteration;
* non-finite losses stop the run before the bad step (checkpoint + FloatingPointError naming the term and
  iteration), or are skipped and counted with SOLVER.SKIP_NONFINITE_STEPS.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.data.test_weakshot_mappers import _pair_mapper, names, pair_data  # noqa: F401  (fixtures)
from tests.data.test_weakshot_training import CLASSES as WS_CLASSES
from tests.data.test_weakshot_training import NOVEL as WS_NOVEL
from tests.data.test_weakshot_training import TINY as WS_TINY
from tests.data.test_weakshot_training import _write_dataset as _write_ws_dataset
from tests.engine.test_training import BASE_CONFIG, REPO, TINY, _write_tiny_dataset

RECORDING_LAUNCHER = """
import json, os, signal, sys
sys.path.insert(0, {repo!r})
import simformer
from detectron2.engine import HookBase
from detectron2.utils import comm
from simformer.data.datasets.folder import register_sem_seg_folder
from simformer.engine import Trainer
from simformer.data.datasets.weakshot import register_simulated_weakshot
for split in ("train", "val"):
    register_sem_seg_folder("tiny_" + split, {root!r} + "/images/" + split, {root!r} + "/labels/" + split, ["a", "b", "c"])
register_simulated_weakshot("ws_train", {ws_root!r} + "/images", {ws_root!r} + "/full", {classes!r}, {novel!r})


class RecordLosses(HookBase):
    # after every step: every loss term of the step (main process) -> $LOSS_LOG; SIGKILL at $KILL_AT
    def after_step(self):
        it = self.trainer.iter
        if comm.is_main_process():
            storage = self.trainer.storage
            record = {{k: storage.history(k).latest() for k in storage.histories() if k.startswith("loss_") or k == "total_loss"}}
            with open(os.environ["LOSS_LOG"], "a") as f:
                f.write(json.dumps({{"iteration": it, **record}}) + "\\n")
        if it == int(os.environ.get("KILL_AT", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)


_build_hooks = Trainer.build_hooks
Trainer.build_hooks = lambda self: _build_hooks(self) + [RecordLosses()]
import train_net
if __name__ == "__main__":
    train_net.run()
"""

# no evaluation: only the training losses matter here
COMMON = ["DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "3"]


# SimFormer stage 1 with SimNet (pair mapper, random point sampling, running pair balance) on the weak-shot
# tiny dataset of tests/data/test_weakshot_training.py
CROSIM_CONFIG = os.path.join(REPO, "configs", "synthetic", "simformer", "seg_crosim.yaml")
CROSIM = [
    *WS_TINY,
    "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_POINT_NUM", "10",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.NOVEL_POINT_NUM", "10",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.HIDDEN_DIM", "16",
    "DATASETS.TRAIN", "('ws_train',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.NUM_VIS_OVERLAYS", "0",
]  # fmt: skip
SETUPS = {"maskformer": (BASE_CONFIG, TINY), "simformer_crosim": (CROSIM_CONFIG, CROSIM)}


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_rel"))
    _write_tiny_dataset(root)
    ws_root = os.path.join(root, "ws")
    _write_ws_dataset(ws_root, n=4)
    path = os.path.join(root, "run_recording.py")
    with open(path, "w") as f:
        f.write(RECORDING_LAUNCHER.format(repo=REPO, root=root, ws_root=ws_root, classes=WS_CLASSES, novel=WS_NOVEL))
    return path


def _run(launcher, out, log, *extra, opts=(), kill_at=None, timeout=300, setup="maskformer"):
    env = dict(os.environ, OMP_NUM_THREADS="1", LOSS_LOG=log)
    if kill_at is not None:
        env["KILL_AT"] = str(kill_at)
    config, tiny = SETUPS[setup]
    cmd = [sys.executable, launcher, "--config-file", config, *extra, *tiny, *COMMON, "OUTPUT_DIR", out, *opts]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(log):
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def _max_rel_diff(a, b):
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a if k != "iteration")


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_killed_and_resumed_run_reproduces_the_losses(launcher, tmp_path, setup):
    opts = ["SOLVER.MAX_ITER", "6"]
    full = _run(launcher, str(tmp_path / "full"), str(tmp_path / "full.jsonl"), opts=opts, setup=setup)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = _losses(str(tmp_path / "full.jsonl"))
    assert [r["iteration"] for r in reference] == list(range(6))

    out, log = str(tmp_path / "killed"), str(tmp_path / "killed.jsonl")
    killed = _run(launcher, out, log, opts=opts, kill_at=3, setup=setup)  # killed after step 3; last checkpoint: step 2
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000002.pth"
    resumed = _run(launcher, out, log, "--resume", opts=opts, setup=setup)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 3" in resumed.stdout + resumed.stderr

    records = _losses(log)
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 3, 4, 5]  # step 3 ran twice: before the kill and after resuming
    worst = max(_max_rel_diff(r, reference[r["iteration"]]) for r in records)
    print(f"resume ({setup}): max relative difference of any of {len(records[0]) - 1} loss terms over {len(records)} steps: {worst:.3g}")
    assert worst <= 1e-6
    # the resumed checkpoint carries the optimizer, RNG states and the data seed
    ckpt = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)
    assert {"_trainer", "rng_states", "data_seed"} <= set(ckpt["trainer"])
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]
    if setup == "simformer_crosim":  # SimNet's running class balance is part of the model state
        assert "loss_cro_sim" in records[0]
        history = [v for k, v in ckpt["model"].items() if k.endswith("history")]
        assert len(history) == 1 and int(next(v for k, v in ckpt["model"].items() if k.endswith("num_updates"))) == 1 + 3


def test_two_gloo_processes_match_one_process(launcher, tmp_path):
    opts = ["SOLVER.MAX_ITER", "3", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "FrozenBN", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100"]
    one = _run(launcher, str(tmp_path / "one"), str(tmp_path / "one.jsonl"), opts=opts)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(launcher, str(tmp_path / "two"), str(tmp_path / "two.jsonl"), "--num-gpus", "2", opts=opts, timeout=400)
    assert two.returncode == 0, (two.stdout[-2000:], two.stderr[-3000:])
    a, b = _losses(str(tmp_path / "two.jsonl")), _losses(str(tmp_path / "one.jsonl"))
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [0, 1, 2]
    diffs = [_max_rel_diff(x, y) for x, y in zip(a, b)]
    print(f"2 processes vs 1: max relative difference of any loss term per iteration: {[f'{d:.3g}' for d in diffs]}")
    assert max(diffs) <= 1e-5


# ------------------------------------------------------------------------------------------------ in-process
def _tiny_cfg(tmp_path, name, *opts):
    from detectron2.config import get_cfg

    from simformer import add_simformer_config
    from simformer.data.datasets.folder import register_sem_seg_folder
    from simformer.utils.config_merge import merge_config

    root = str(tmp_path / "data")
    _write_tiny_dataset(root)
    register_sem_seg_folder(name, root + "/images/train", root + "/labels/train", ["a", "b", "c"])
    cfg = get_cfg()
    add_simformer_config(cfg)
    merge_config(cfg, BASE_CONFIG, TINY + ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"), *opts])
    return cfg


def _batches(loader, n):
    it = iter(loader)
    return [[(d["file_name"], d["image"], d["sem_seg"]) for d in next(it)] for _ in range(n)]


def _same(a, b):
    return all(x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b)) and len(a) == len(b)


def test_loader_batches_depend_only_on_seed_and_iteration(tmp_path, name):
    from detectron2.data import DatasetCatalog

    from simformer.data.dataset_mappers import build_mapper
    from simformer.data.train_loader import ResumableTrainLoader

    cfg = _tiny_cfg(tmp_path, name, "INPUT.MIN_SIZE_TRAIN", "(48, 64, 80)", "INPUT.CROP.SIZE", "(40, 40)")
    dicts, mapper = DatasetCatalog.get(name), build_mapper(cfg, True)
    single = _batches(ResumableTrainLoader(dicts, mapper, 4, seed=5, world_size=1, rank=0), 5)  # 5 x 4 > 6 images: 3+ epochs
    resumed = _batches(ResumableTrainLoader(dicts, mapper, 4, seed=5, world_size=1, rank=0, start_iter=3), 2)
    assert all(_same(x, y) for x, y in zip(single[3:], resumed))
    np.random.seed(123)  # the global RNG state does not matter
    with_workers = _batches(ResumableTrainLoader(dicts, mapper, 4, seed=5, world_size=1, rank=0, num_workers=2), 3)
    assert all(_same(x, y) for x, y in zip(single, with_workers))
    ranks = [_batches(ResumableTrainLoader(dicts, mapper, 4, seed=5, world_size=2, rank=r), 5) for r in (0, 1)]
    assert all(_same(s, r0 + r1) for s, r0, r1 in zip(single, *ranks))  # rank r: the r-th half of the global batch
    other = _batches(ResumableTrainLoader(dicts, mapper, 4, seed=6, world_size=1, rank=0), 5)
    assert not all(_same(x, y) for x, y in zip(single, other))
    epoch0 = [d[0] for batch in single for d in batch][:6]
    assert len(set(epoch0)) == 6  # each epoch is a permutation


def test_pair_partners_do_not_depend_on_the_number_of_processes(pair_data, names):  # noqa: F811
    from simformer.data.train_loader import ResumableTrainLoader

    mapper, dicts = _pair_mapper(pair_data, names, pair_type="Rand")

    def batches(world_size, rank, start_iter=0):
        it = iter(ResumableTrainLoader(dicts, mapper, 4, seed=11, world_size=world_size, rank=rank, start_iter=start_iter))
        return [[(d["file_name"], d["pair"]["file_name"], d["pair"]["image"]) for d in next(it)] for _ in range(4)]

    def same(a, b):
        return len(a) == len(b) and all(x[:2] == y[:2] and torch.equal(x[2], y[2]) for x, y in zip(a, b))

    single = batches(1, 0)
    assert all(same(s, r0 + r1) for s, r0, r1 in zip(single, batches(2, 0), batches(2, 1)))
    assert all(same(s, r) for s, r in zip(single[2:], batches(1, 0, start_iter=2)))
    assert len({p for batch in single for _, p, _ in batch}) > 1  # partners do vary


def _trainer_with_nan(cfg, bad_iter, term="loss_dice"):
    from detectron2.engine import HookBase

    from simformer.engine import Trainer

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward

    def poisoned(batched_inputs):
        losses = forward(batched_inputs)
        if trainer.iter == bad_iter:
            losses[term] = losses[term] * float("nan")
        return losses

    model.forward = poisoned
    snapshots = {}

    class Snapshot(HookBase):
        def after_step(self):
            snapshots[self.trainer.iter] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    trainer.register_hooks([Snapshot()])
    return trainer, snapshots


def test_nonfinite_loss_stops_with_a_checkpoint_from_before_the_step(tmp_path, name):
    cfg = _tiny_cfg(tmp_path, name, "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer, snapshots = _trainer_with_nan(cfg, bad_iter=2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 2: loss_dice=nan\b.*model_before_nonfinite_iter2\.pth"):
        trainer.train()
    out = cfg.OUTPUT_DIR
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_before_nonfinite_iter2.pth"
    ckpt = torch.load(os.path.join(out, "model_before_nonfinite_iter2.pth"), weights_only=True)
    assert ckpt["iteration"] == 1 and ckpt["trainer"]["iteration"] == 1  # --resume restarts at step 2
    for k, v in ckpt["model"].items():  # the parameters after step 1, untouched by step 2
        assert torch.equal(v, snapshots[1][k]), k
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_nonfinite_loss_skipped_when_configured(tmp_path, name, caplog):
    import logging

    cfg = _tiny_cfg(tmp_path, name, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.SKIP_NONFINITE_STEPS", "True")
    trainer, snapshots = _trainer_with_nan(cfg, bad_iter=2, term="loss_ce_0")
    caplog.set_level(logging.WARNING)
    simformer_logger = logging.getLogger("simformer")  # train_net's setup_logger stops its propagation
    simformer_logger.addHandler(caplog.handler)
    try:
        trainer.train()
    finally:
        simformer_logger.removeHandler(caplog.handler)
    assert trainer.nonfinite_skipped_iters == [2]
    assert trainer.storage.history("nonfinite_skipped_steps").latest() == 1
    for k in snapshots[1]:  # the skipped step changed nothing
        assert torch.equal(snapshots[1][k], snapshots[2][k]), k
    assert not all(torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2])  # later steps train again
    steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == {3}  # 4 iterations, 1 skipped
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "non-finite loss at iteration 2: loss_ce_0=nan" in messages and "Skipped 1 step(s) with non-finite losses" in messages
    ckpt = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=True)
    assert ckpt["trainer"]["nonfinite_skipped_iters"] == [2]


def test_torchrun_two_processes_match_one_process(launcher, tmp_path):
    """Started by torchrun (RANK / LOCAL_RANK / WORLD_SIZE / MASTER_*), the launcher joins torchrun's job
    instead of spawning, and 2 CPU processes give the 1-process losses."""
    opts = ["SOLVER.MAX_ITER", "3", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "FrozenBN", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100"]
    one = _run(launcher, str(tmp_path / "one"), str(tmp_path / "one.jsonl"), opts=opts)
    assert one.returncode == 0, one.stderr[-3000:]
    config, tiny = SETUPS["maskformer"]
    import socket

    with socket.socket() as sock:  # a free port for torchrun's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), launcher,
           "--config-file", config, *tiny, *COMMON, "OUTPUT_DIR", str(tmp_path / "two"), *opts]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", LOSS_LOG=str(tmp_path / "two.jsonl"))
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert two.returncode == 0, (two.stdout[-2000:], two.stderr[-3000:])
    assert "Started by torchrun: rank 0 of 2" in two.stdout
    a, b = _losses(str(tmp_path / "two.jsonl")), _losses(str(tmp_path / "one.jsonl"))
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [0, 1, 2]
    assert max(_max_rel_diff(x, y) for x, y in zip(a, b)) <= 1e-5


def test_external_launcher_environment():
    from simformer.utils.d2compat import external_launcher_env

    assert external_launcher_env({}) is None
    assert external_launcher_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}) is None  # one process
    info = external_launcher_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    assert (info["rank"], info["local_rank"], info["world_size"], info["local_world_size"], info["init_method"]) == (3, 1, 4, 2, "env://")
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    info = external_launcher_env(slurm)
    assert (info["rank"], info["local_rank"], info["world_size"], info["local_world_size"], info["init_method"]) == (5, 1, 8, 4, "tcp://node1:29500")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        external_launcher_env({k: v for k, v in slurm.items() if not k.startswith("MASTER")})
