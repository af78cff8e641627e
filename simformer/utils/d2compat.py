"""The single place for detectron2 / NumPy / Pillow / PyTorch version workarounds.

``apply()`` runs once, from ``simformer/__init__.py``, before any detectron2 sub-package that needs a
patch is imported. Every patch first checks whether it is needed and does nothing on a detectron2 (or
NumPy / Pillow / PyTorch) that does not need it, so all of this can be deleted once detectron2 0.6 is
no longer a supported install route (``tools/setup_env.sh`` installs it only when upstream detectron2
cannot be fetched).

The install-time counterpart, a stand-in ``detectron2._C`` for 0.6 built without its C++ ops, is
``tools/d2_c_stub.py`` (copied into detectron2 by ``tools/setup_env.sh``).

Patches (one line each on why):

1. NumPy aliases ``np.int/np.float/np.bool/np.object`` -- removed in NumPy 1.24, used by 0.6 helpers
   (``structures/masks.py``, ``utils/visualizer.py``, ``data/build.py``).
2. ``PIL.Image.LINEAR``      -- removed in Pillow 10, used as a default argument in 0.6's
   ``data/transforms/transform.py`` at import time.
3. ``create_ddp_model`` on CPU -- every detectron2 version passes ``device_ids=[local_rank]`` to
   DistributedDataParallel, which PyTorch rejects for CPU modules (multi-process CPU training).
4. ``launch`` with gloo       -- 0.6 hard-codes the NCCL backend and ``torch.cuda.set_device``; see
   :func:`launch`, which defers to detectron2's own ``launch`` whenever CUDA is in use.

detectron2 internals the trainer relies on (private names that differ between versions) are reached only
through the helpers at the end of this module: :func:`d2_saves_optimizer`, :func:`inner_trainer` /
:func:`set_inner_trainer` (``DefaultTrainer._trainer``) and :func:`next_batch` / :func:`restart_batches`
(``SimpleTrainer._data_loader_iter``).
"""
import logging
import os
from datetime import timedelta

import numpy as np

import torch

__all__ = ["apply", "launch", "external_launcher_env", "run_under_external_launcher", "detectron2_has_c_ops", "d2_saves_optimizer", "inner_trainer", "set_inner_trainer", "next_batch", "restart_batches"]

logger = logging.getLogger(__name__)

_APPLIED = False


def detectron2_has_c_ops() -> bool:
    """False when detectron2 runs with the pure-Python stand-in for its compiled ops."""
    from detectron2 import _C

    return not getattr(_C, "SIMFORMER_STUB", False)


def _numpy_aliases():
    """Patch 1: NumPy >= 1.24 removed the deprecated builtin aliases."""
    for name, value in (("int", int), ("float", float), ("bool", bool), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, value)


def _pillow_linear():
    """Patch 2: Pillow >= 10 removed ``Image.LINEAR`` (an alias of BILINEAR)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():  # Pillow 9.1-9.5 still has it, with a DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        present = hasattr(Image, "LINEAR")
    if not present:
        Image.LINEAR = Image.BILINEAR


def _cpu_ddp():
    """Patch 3: DistributedDataParallel on CPU must not receive ``device_ids``."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    if getattr(original, "_simformer_cpu_ddp", False):
        return

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        param = next(model.parameters(), None)
        if param is not None and param.device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._simformer_cpu_ddp = True
    create_ddp_model.__doc__ = original.__doc__
    defaults.create_ddp_model = create_ddp_model
    import detectron2.engine as engine

    engine.create_ddp_model = create_ddp_model


def apply():
    """Apply every needed workaround (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _numpy_aliases()
    _pillow_linear()
    _cpu_ddp()
    _APPLIED = True


# ------------------------------------------------------------------------------------------------
# Patch 4: a launcher that also works for several CPU processes.
# ------------------------------------------------------------------------------------------------
def _launcher_supports_cpu():
    import inspect

    from detectron2.engine import launch as launch_module

    return "GLOO" in inspect.getsource(launch_module).upper()


def _find_free_port():
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _set_local_process_group(num_per_machine, machine_rank, num_machines):
    """Create the per-machine process group that ``detectron2.utils.comm.get_local_rank`` reads."""
    import torch.distributed as dist
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):  # detectron2 > 0.6
        comm.create_local_process_group(num_per_machine)
        return
    for i in range(num_machines):
        ranks = list(range(i * num_per_machine, (i + 1) * num_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, num_machines, dist_url, args, timeout):
    import torch.distributed as dist

    apply()
    global_rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    _set_local_process_group(num_per_machine, machine_rank, num_machines)
    from detectron2.utils import comm

    comm.synchronize()
    main_func(*args)
    comm.synchronize()
    dist.destroy_process_group()
    # gloo in torch 2.x sometimes aborts (SIGABRT, "terminate called without an active exception") while
    # its threads are torn down at interpreter exit; after a clean finish, flush and leave immediately.
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(main_func, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=(), timeout=timedelta(minutes=30), use_cpu=None):
    """detectron2's ``launch`` that also spawns CPU processes (gloo) on any detectron2 version.

    ``num_gpus_per_machine`` is the number of processes per machine (GPUs on a GPU machine). With
    ``use_cpu`` (default: CUDA unavailable) and a detectron2 whose launcher hard-codes NCCL (0.6), the
    processes are spawned here with the gloo backend; otherwise detectron2's launcher is used unchanged.
    """
    from detectron2.engine import launch as d2_launch

    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1 or not use_cpu or _launcher_supports_cpu():
        return d2_launch(main_func, num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url=auto only works on one machine; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    import torch.multiprocessing as mp

    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, num_machines, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def external_launcher_env(environ=None):
    """The process layout when an external launcher started this process, else None.

    ``torchrun`` / ``torch.distributed.run`` set ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` / ``MASTER_PORT``; SLURM's ``srun`` (one task per GPU) sets
    ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, ``SLURM_NTASKS_PER_NODE`` and the job script
    exports ``MASTER_ADDR`` / ``MASTER_PORT`` (e.g. the first host of ``scontrol show hostnames``).
    Returns {"rank", "local_rank", "world_size", "local_world_size", "init_method", "launcher"}; a single
    process (world size 1) counts as no external launcher."""
    env = os.environ if environ is None else environ
    if all(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        info = {"rank": int(env["RANK"]), "local_rank": int(env["LOCAL_RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_world_size": int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])), "init_method": "env://", "launcher": "torchrun"}  # fmt: skip
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise RuntimeError("started by SLURM with several tasks: export MASTER_ADDR (the first node's host name) and MASTER_PORT in the job script")
        ntasks = int(env["SLURM_NTASKS"])
        per_node = int(str(env.get("SLURM_NTASKS_PER_NODE", ntasks)).split("(")[0])
        info = {"rank": int(env["SLURM_PROCID"]), "local_rank": int(env.get("SLURM_LOCALID", 0)), "world_size": ntasks,
                "local_world_size": per_node, "init_method": f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}", "launcher": "SLURM"}  # fmt: skip
    else:
        return None
    if info["world_size"] <= 1:
        return None
    if info["world_size"] % info["local_world_size"]:
        raise RuntimeError(f"{info['launcher']}: world size {info['world_size']} is not a multiple of the processes per machine ({info['local_world_size']})")
    return info


def run_under_external_launcher(main_func, info, args=(), timeout=timedelta(minutes=30)):
    """Run ``main_func(*args)`` in this process as rank ``info["rank"]`` of a job started by torchrun or
    SLURM (:func:`external_launcher_env`): no processes are spawned. NCCL on CUDA, gloo on CPU."""
    import torch.distributed as dist
    from detectron2.utils import comm

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info["local_rank"])
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=info["init_method"], world_size=info["world_size"], rank=info["rank"], timeout=timeout)
    per_machine = info["local_world_size"]
    _set_local_process_group(per_machine, info["rank"] // per_machine, info["world_size"] // per_machine)
    comm.synchronize()
    try:
        return main_func(*args)
    finally:
        comm.synchronize()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ trainer internals
def d2_saves_optimizer() -> bool:
    """detectron2 > 0.6 saves the inner trainer (optimizer, scaler) in ``DefaultTrainer.state_dict`` itself."""
    from detectron2.engine import DefaultTrainer

    return "state_dict" in DefaultTrainer.__dict__


def inner_trainer(trainer):
    """The ``SimpleTrainer`` that a ``DefaultTrainer`` runs its steps with."""
    return trainer._trainer


def set_inner_trainer(trainer, inner):
    trainer._trainer = inner


def next_batch(inner):
    """The next training batch of a ``SimpleTrainer`` (from the iterator it keeps over its loader)."""
    return next(inner._data_loader_iter)


def restart_batches(inner, loader):
    """Make a ``SimpleTrainer`` read its batches from a fresh iterator over ``loader``."""
    inner._data_loader_iter = iter(loader)
