"""Train / evaluate simformer models with detectron2's trainer: the code behind ``train_net.py``,
``simformer-train`` and every stage of the weak-shot pipeline (so an installed package needs no repository
file)::

    python -m simformer.engine.launch --config-file configs/synthetic/maskformer_R18_fully_supervised.yaml
    python -m simformer.engine.launch --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python -m simformer.engine.launch --config-file ... --resume        # continue from OUTPUT_DIR/last_checkpoint
    python -m simformer.engine.launch --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)
"""
import logging
import os

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils.logger import setup_logger

from ..config import add_simformer_config
from ..utils.config_merge import merge_config
from ..utils.d2compat import external_launcher_env, launch, run_under_external_launcher
from .checkpoint import AtomicCheckpointer
from .trainer import Trainer
from .visualize import write_overlays

__all__ = ["setup", "main", "run", "check_datasets_fit_config"]


def setup(args):
    cfg = get_cfg()
    add_simformer_config(cfg)
    merge_config(cfg, args.config_file, args.opts)  # unknown keys: error naming the key + close matches
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="simformer")
    return cfg


def check_datasets_fit_config(cfg, train: bool = True) -> None:
    """Every registered dataset of ``DATASETS.TEST`` (and ``TRAIN`` when ``train``) with a class list must have
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` classes (else training learns nonsense and mIoU comes out 0 or NaN)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    registered = set(DatasetCatalog.list())
    for name in (list(cfg.DATASETS.TRAIN) if train else []) + list(cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("stuff_classes", None) if name in registered else None
        if classes is not None and len(classes) != k:
            raise ValueError(f"dataset '{name}' has {len(classes)} classes ({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''}) "
                             f"but MODEL.SEM_SEG_HEAD.NUM_CLASSES is {k}: set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}")  # fmt: skip


def main(args):
    cfg = setup(args)
    check_datasets_fit_config(cfg, train=not args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # strict: every tensor must fit (weights for another NUM_CLASSES are an error, not skipped)
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict_shapes=True)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            raise ValueError("--eval-only needs weights: set MODEL.WEIGHTS to a checkpoint file (or use --resume with OUTPUT_DIR/last_checkpoint)")
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        model = getattr(trainer.model, "module", trainer.model)  # unwrap DistributedDataParallel
    if cfg.TEST.NUM_VIS_OVERLAYS > 0 and comm.is_main_process():
        for name in cfg.DATASETS.TEST:
            paths = write_overlays(cfg, model, name, cfg.TEST.NUM_VIS_OVERLAYS)
            print(f"Prediction overlays ({len(paths)} PNGs): {os.path.dirname(paths[0]) if paths else '-'}")
    if comm.is_main_process():
        _write_plots(cfg.OUTPUT_DIR)
    return results


def _write_plots(output_dir):
    """Loss / LR / metric / per-class IoU PNGs into OUTPUT_DIR/plots (a failure only warns: training is done)."""
    try:
        from ..tools.plot import write_plots

        paths = write_plots(output_dir)
    except Exception as e:  # noqa: BLE001
        logging.getLogger("simformer").warning(f"plots not written: {type(e).__name__}: {e}")
        return
    if paths:
        print(f"Plots ({', '.join(os.path.basename(p) for p in paths)}): {os.path.dirname(paths[0])}")


def run(argv=None):
    """Parse detectron2's usual flags and launch :func:`main` in one or several processes.

    Started by ``torchrun`` or SLURM's ``srun`` (their environment variables, see
    :func:`~simformer.utils.d2compat.external_launcher_env`), this process is one rank of their job and
    nothing is spawned; ``--num-gpus`` / ``--num-machines`` / ``--machine-rank`` / ``--dist-url`` are then
    ignored. Otherwise detectron2's launcher spawns ``--num-gpus`` processes per machine."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    info = external_launcher_env()
    if info is not None:
        print(f"Started by {info['launcher']}: rank {info['rank']} of {info['world_size']} ({info['local_world_size']} per machine); not spawning")
        return run_under_external_launcher(main, info, args=(args,))
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    import simformer  # noqa: F401  (d2compat patches and registries when run as python -m)

    run()
