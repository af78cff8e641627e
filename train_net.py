#!/usr/bin/env python
"""Train / evaluate simformer models with detectron2's trainer.

    python train_net.py --config-file configs/synthetic/maskformer_R18_fully_supervised.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)
"""
import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils.logger import setup_logger

import simformer  # noqa: F401  (applies d2compat, fills registries)
from simformer import add_simformer_config
from simformer.engine import Trainer, write_overlays
from simformer.utils.d2compat import launch


def setup(args):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="simformer")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        model = getattr(trainer.model, "module", trainer.model)  # unwrap DistributedDataParallel
    if cfg.TEST.NUM_VIS_OVERLAYS > 0 and comm.is_main_process():
        for name in cfg.DATASETS.TEST:
            write_overlays(cfg, model, name, cfg.TEST.NUM_VIS_OVERLAYS)
    return results


def run(argv=None):
    """Parse detectron2's usual flags and launch ``main`` in one or several processes."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    run()
