"""detectron2 ``DefaultTrainer`` for simformer: mapper by config, our evaluator, AdamW groups, poly LR.

Reliability additions (over ``DefaultTrainer``):

* checkpoints are written atomically (:class:`~simformer.engine.checkpoint.AtomicCheckpointer`, also used by
  the ``PeriodicCheckpointer`` hook) and hold the optimizer state (detectron2 0.6 leaves it out), the RNG
  states, the data seed and the skipped-step record;
* exact resume: batches are a function of ``(seed, iteration)`` (:mod:`simformer.data.train_loader`) and
  the global RNGs are re-seeded from ``(seed, iteration, rank)`` before every step
  (:class:`~simformer.engine.hooks.IterationSeed`), so a run resumed at iteration ``k`` repeats the
  uninterrupted run's losses;
* non-finite losses are caught before backward (:mod:`simformer.engine.nonfinite`): the run saves
  ``model_before_nonfinite_iter<i>.pth`` (the state before step ``i``; ``--resume`` restarts at ``i``) and
  raises ``FloatingPointError`` naming the terms, or, with ``SOLVER.SKIP_NONFINITE_STEPS``, skips the
  step with a warning and counts it (``nonfinite_skipped_steps`` in the metrics, a summary at the end);
* mixed precision on any device (``SOLVER.AMP.ENABLED`` / ``SOLVER.AMP.DTYPE``) through ``torch.autocast``
  (:class:`~simformer.engine.amp.AutocastTrainer`), instead of detectron2 0.6's CUDA-only ``AMPTrainer``;
* sliding-window evaluation (``TEST.SLIDING_WINDOW``): :meth:`Trainer.test` wraps the model in
  :class:`~simformer.modeling.sliding_window.SlidingWindowInference`.
"""
import logging
import os
import weakref

from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm

from ..data.dataset_mappers import build_mapper
from ..data.dataset_mappers.sem_seg_mapper import SemSegTestMapper
from ..evaluation import SemSegEvaluator
from ..data.train_loader import ResumableTrainLoader, build_resumable_train_loader, check_dataset_names
from ..evaluation.pseudo_labels import PseudoLabelWriter
from ..modeling.sliding_window import SlidingWindowInference
from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA, uses_tta
from ..utils import d2compat
from .checkpoint import AtomicCheckpointer, capture_rng_states, restore_rng_states
from .hooks import IterationSeed
from .amp import AutocastTrainer, amp_dtype
from .nonfinite import GuardedSimpleTrainer, NonFiniteLossError
from .optimizer import build_optimizer, build_poly_lr_scheduler

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


_D2_SAVES_OPTIMIZER = d2compat.d2_saves_optimizer()


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        amp = cfg.SOLVER.AMP.ENABLED
        if amp:
            amp_dtype(cfg.SOLVER.AMP.DTYPE)  # fail early on a bad key
            # detectron2's AMPTrainer (CUDA-only, deprecated scaler API) is never built: AutocastTrainer below
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.AMP.ENABLED = False
        super().__init__(cfg)
        if amp:
            self.cfg = self.cfg.clone()
            self.cfg.defrost()
            self.cfg.SOLVER.AMP.ENABLED = True
            self.cfg.freeze()
        # non-finite losses are caught before backward (same model / loader / optimizer)
        inner = d2compat.inner_trainer(self)
        if amp:
            d2compat.set_inner_trainer(self, AutocastTrainer(inner.model, inner.data_loader, inner.optimizer, dtype=self.cfg.SOLVER.AMP.DTYPE))
        else:
            d2compat.set_inner_trainer(self, GuardedSimpleTrainer(inner.model, inner.data_loader, inner.optimizer))
        # atomic checkpoints, also for the PeriodicCheckpointer hook built by DefaultTrainer
        self.checkpointer = AtomicCheckpointer(self.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        for h in self._hooks:
            if isinstance(h, d2_hooks.PeriodicCheckpointer):
                h.checkpointer = self.checkpointer
        loader = self.data_loader
        self.data_seed = loader.seed if isinstance(loader, ResumableTrainLoader) else cfg.SEED
        self.nonfinite_skipped_iters = []
        this = weakref.ref(self)
        self.register_hooks([IterationSeed(lambda: this().data_seed)])

    def build_writers(self):
        """detectron2's writers (console, ``metrics.json``, TensorBoard); the TensorBoard one only when the
        ``tensorboard`` package is installed (detectron2 0.6 fails at start without it)."""
        from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)  # as detectron2's default_writers
        writers = [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]
        try:
            writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
        except ImportError as e:
            logger.warning(f"No TensorBoard event files ({e}); metrics.json and the console log are written")
        return writers

    @classmethod
    def build_train_loader(cls, cfg):
        check_dataset_names(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")  # before the mapper reads their metadata
        return build_resumable_train_loader(cfg, mapper=build_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_names([dataset_name], "DATASETS.TEST")
        return build_detection_test_loader(cfg, dataset_name, mapper=SemSegTestMapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if cfg.TEST.PSEUDO_LABEL_DIR:
            return PseudoLabelWriter(dataset_name, cfg.TEST.PSEUDO_LABEL_DIR, distributed=True)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        tolerance = cfg.TEST.BOUNDARY_TOLERANCE or None
        return DatasetEvaluators([SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder, boundary_tolerance=tolerance)])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation; with ``TEST.SLIDING_WINDOW.ENABLED`` the model predicts window by window,
        with ``TEST.AUG.ENABLED`` (or ``TEST.AUG.PSEUDO_LABELS`` when writing pseudo-labels) through TTA."""
        if cfg.TEST.SLIDING_WINDOW.ENABLED:
            model = SlidingWindowInference.from_config(cfg, getattr(model, "module", model))
        if uses_tta(cfg):
            model = SemanticSegmentorWithTTA.from_config(cfg, model)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
            return build_poly_lr_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)

    # -------------------------------------------------------------------------------- resume
    def resume_or_load(self, resume=True):
        # resuming must restore every tensor; plain MODEL.WEIGHTS may come from another label set
        self.checkpointer.strict_shapes = bool(resume and self.checkpointer.has_checkpoint())
        super().resume_or_load(resume=resume)

    def state_dict(self):
        ret = super().state_dict()
        if not _D2_SAVES_OPTIMIZER:
            ret["_trainer"] = d2compat.inner_trainer(self).state_dict()
        ret["rng_states"] = capture_rng_states()
        ret["data_seed"] = int(self.data_seed)
        ret["nonfinite_skipped_iters"] = list(self.nonfinite_skipped_iters)
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not _D2_SAVES_OPTIMIZER:
            if "_trainer" in state_dict:
                d2compat.inner_trainer(self).load_state_dict(state_dict["_trainer"])
            else:
                logger.warning("The checkpoint has no optimizer state (written before simformer saved it); the optimizer starts afresh")
        if "data_seed" in state_dict:
            if int(state_dict["data_seed"]) != int(self.data_seed):
                logger.info(f"Data seed {state_dict['data_seed']} from the checkpoint (this run's would be {self.data_seed})")
            self.data_seed = int(state_dict["data_seed"])
        if comm.get_rank() == 0:  # the states saved are those of the main process
            restore_rng_states(state_dict.get("rng_states"))
        self.nonfinite_skipped_iters = list(state_dict.get("nonfinite_skipped_iters", []))

    def train(self):
        loader = self.data_loader
        if isinstance(loader, ResumableTrainLoader):
            # the loader starts where this run starts (0, or the iteration after the checkpoint)
            loader.seed, loader.start_iter = self.data_seed, self.start_iter
            d2compat.restart_batches(d2compat.inner_trainer(self), loader)
        try:
            return super().train()
        finally:
            if self.nonfinite_skipped_iters:
                logger.warning(
                    f"Skipped {len(self.nonfinite_skipped_iters)} step(s) with non-finite losses "
                    f"(SOLVER.SKIP_NONFINITE_STEPS) at iterations {self.nonfinite_skipped_iters}"
                )

    # -------------------------------------------------------------------------------- non-finite losses
    def run_step(self):
        try:
            super().run_step()
        except NonFiniteLossError as e:
            if self.cfg.SOLVER.SKIP_NONFINITE_STEPS:
                self.nonfinite_skipped_iters.append(self.iter)
                logger.warning(f"{e}; step skipped (SOLVER.SKIP_NONFINITE_STEPS), {len(self.nonfinite_skipped_iters)} skipped so far")
                self.storage.put_scalar("nonfinite_skipped_steps", len(self.nonfinite_skipped_iters), smoothing_hint=False)
                return
            name = f"model_before_nonfinite_iter{self.iter}"
            it = self.iter
            self.iter = it - 1  # the saved state is that after step it-1: --resume restarts at step it
            try:
                self.checkpointer.save(name, iteration=it - 1)
            finally:
                self.iter = it
            comm.synchronize()
            path = os.path.join(self.cfg.OUTPUT_DIR, name + ".pth")
            raise FloatingPointError(
                f"{e}. Stopped before the step's backward pass; the state from before it is in {path} "
                "(set SOLVER.SKIP_NONFINITE_STEPS True to skip such steps instead)"
            ) from e
