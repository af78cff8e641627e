"""Training hooks of simformer's :class:`~simformer.engine.Trainer`."""
import logging
import random

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.train_loader import derive_seed

__all__ = ["IterationSeed"]

logger = logging.getLogger(__name__)


class IterationSeed(HookBase):
    """Before every step, seed Python ``random``, NumPy's global generator and torch (CPU and CUDA)
    from ``(seed, iteration, rank)``.

    Together with the training loader of :mod:`simformer.data.train_loader` (batches a function of
    ``(seed, iteration)``), every random draw of step ``i`` (dropout, point sampling, ...) is a function
    of ``(seed, i, rank)``: a run resumed at iteration ``k`` repeats the uninterrupted run's steps,
    whatever the hooks (evaluation, checkpointing) consumed in between. ``seed``: a callable returning
    the seed (the trainer's ``data_seed``, restored from the checkpoint on resume) or an int.
    """

    def __init__(self, seed):
        self._seed = seed

    @property
    def seed(self):
        return int(self._seed() if callable(self._seed) else self._seed)

    def before_step(self):
        s = derive_seed(self.seed, 3, self.trainer.iter, comm.get_rank())
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # also seeds every CUDA device
