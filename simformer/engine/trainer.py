"""detectron2 ``DefaultTrainer`` for simformer: mapper by config, our evaluator, AdamW groups, poly LR."""
import logging
import os

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluators

from ..data.dataset_mappers import build_mapper
from ..data.dataset_mappers.sem_seg_mapper import SemSegTestMapper
from ..evaluation import SemSegEvaluator
from ..evaluation.pseudo_labels import PseudoLabelWriter
from .optimizer import build_optimizer, build_poly_lr_scheduler

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=SemSegTestMapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if cfg.TEST.PSEUDO_LABEL_DIR:
            return PseudoLabelWriter(dataset_name, cfg.TEST.PSEUDO_LABEL_DIR, distributed=True)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)])

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
            return build_poly_lr_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)
