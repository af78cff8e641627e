"""A training data loader whose output at iteration ``i`` is a function of ``(seed, i)`` only.

detectron2's ``TrainingSampler`` streams one endless shuffle per process and data-loader workers draw
augmentations from per-worker generators seeded when the loader starts, so a resumed run sees other
data and other augmentations than the uninterrupted run. Here:

* the sample stream is a concatenation of epochs, epoch ``e`` a permutation of the dataset drawn from
  ``(seed, e)``; iteration ``i`` takes stream positions ``[i * B, (i + 1) * B)`` (``B`` =
  ``SOLVER.IMS_PER_BATCH``, the total batch), and process ``r`` of ``W`` the ``r``-th contiguous slice of
  ``B / W`` of them. Starting at iteration ``k`` is O(1): nothing is replayed;
* each sample is mapped with the global ``random`` / NumPy / torch CPU generators seeded from
  ``(seed, i, slot)`` (``slot``: position in the total batch), restored afterwards, so augmentations
  (and the pair mapper's partner draw, which follows ``torch.initial_seed()``) do not depend on the
  worker, the number of workers or processes, or where the run started.

So a run resumed at iteration ``k`` reads exactly the batches of the uninterrupted run, and one process
with a batch of ``B`` sees the same images and augmentations as ``W`` processes with ``B / W`` each.

Differences from ``build_detection_train_loader``: no aspect-ratio grouping (segmentation crops /
pads to fixed sizes anyway) and only ``DATALOADER.SAMPLER_TRAIN = "TrainingSampler"``.
"""
import contextlib
import logging
import random

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog, DatasetFromList
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.utils import comm

__all__ = [
    "ResumableTrainLoader",
    "IterationBatchSampler",
    "SeededMapDataset",
    "build_resumable_train_loader",
    "check_dataset_names",
    "seeded_rngs",
    "derive_seed",
]

logger = logging.getLogger(__name__)


def derive_seed(*entropy) -> int:
    """A 31-bit seed from non-negative integers (NumPy ``SeedSequence``: independent streams)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Run the body with Python ``random``, NumPy's global generator and torch's CPU generator seeded
    from ``seed``; their previous states are restored afterwards (the CUDA generators are not touched)."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def check_dataset_names(names, key):
    """Raise ``KeyError`` naming ``key`` (e.g. ``"DATASETS.TRAIN"``) for a name not in ``DatasetCatalog``."""
    import difflib

    registered = DatasetCatalog.list()
    if isinstance(names, str):
        raise TypeError(f"{key} must be a list / tuple of dataset names, got the string {names!r} (write ({names!r},))")
    if not names:
        raise ValueError(f"{key} is empty; expected at least one registered dataset name")
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"{key}: dataset {name!r} is not registered.{hint} Registered datasets: {', '.join(sorted(registered)[:20])}{', ...' if len(registered) > 20 else ''}")


class IterationBatchSampler(torchdata.Sampler):
    """Endless batch sampler: for iteration ``i = start_iter, start_iter + 1, ...`` yields this process's
    list of ``(dataset index, sample seed)`` (see the module doc)."""

    def __init__(self, size: int, total_batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start_iter: int = 0):
        if size <= 0:
            raise ValueError(f"IterationBatchSampler: the dataset is empty (size {size})")
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of the number of processes ({world_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.size, self.total_batch_size = int(size), int(total_batch_size)
        self.batch_size = self.total_batch_size // world_size
        self.seed, self.rank, self.world_size, self.start_iter = int(seed), int(rank), int(world_size), int(start_iter)
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch):
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 0, epoch]).permutation(self.size)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, iteration: int):
        """This process's ``[(index, sample_seed), ...]`` of ``iteration``."""
        out = []
        for slot in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
            epoch, offset = divmod(iteration * self.total_batch_size + slot, self.size)
            out.append((int(self._permutation(epoch)[offset]), derive_seed(self.seed, 1, iteration, slot)))
        return out

    def __iter__(self):
        iteration = self.start_iter
        while True:
            yield self.batch(iteration)
            iteration += 1


class SeededMapDataset(torchdata.Dataset):
    """``dataset[(index, seed)] = mapper(dicts[index])`` under :func:`seeded_rngs` ``(seed)``.

    A mapper returning ``None`` (detectron2's "skip this sample") gets the next index with the same seed;
    ``skipped`` counts those in this process (main process or worker)."""

    def __init__(self, dataset_dicts, mapper):
        self.dicts = dataset_dicts if isinstance(dataset_dicts, DatasetFromList) else DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self.mapper = mapper
        self.skipped = 0

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, key):
        index, seed = key
        for attempt in range(len(self.dicts)):
            i = (index + attempt) % len(self.dicts)
            with seeded_rngs(seed):
                data = self.mapper(self.dicts[i])
            if data is not None:
                return data
            self.skipped += 1
            logger.warning(f"mapper skipped sample {i} ({self.dicts[i].get('file_name', '?')}); {self.skipped} skipped so far in this process")
        raise RuntimeError("the mapper skipped every sample of the training dataset")


class ResumableTrainLoader:
    """Iterable over training batches (lists of mapped dicts) starting at iteration ``start_iter``.

    ``seed`` and ``start_iter`` are read when iteration begins (``iter(loader)`` returns a generator that
    builds the torch ``DataLoader`` on its first ``next``), so a trainer can set them after loading a
    checkpoint.
    """

    def __init__(self, dataset_dicts, mapper, total_batch_size, *, seed, num_workers=0, rank=None, world_size=None, start_iter=0):
        self.dataset = SeededMapDataset(dataset_dicts, mapper)
        self.total_batch_size = int(total_batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.start_iter = int(start_iter)
        # fail now (not at the first iteration) on an empty dataset or a bad batch size
        IterationBatchSampler(len(self.dataset), self.total_batch_size, seed=self.seed, rank=self.rank, world_size=self.world_size)

    def batch_sampler(self):
        return IterationBatchSampler(
            len(self.dataset), self.total_batch_size, seed=self.seed, rank=self.rank, world_size=self.world_size, start_iter=self.start_iter
        )

    def __iter__(self):
        loader = torchdata.DataLoader(
            self.dataset,
            batch_sampler=self.batch_sampler(),
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            worker_init_fn=worker_init_reset_seed,
            # its own generator: creating the loader must not consume the global torch RNG
            generator=torch.Generator().manual_seed(derive_seed(self.seed, 2, self.start_iter, self.rank)),
        )
        yield from loader


def build_resumable_train_loader(cfg, mapper, *, seed=None, dataset_dicts=None):
    """:class:`ResumableTrainLoader` of ``cfg.DATASETS.TRAIN`` (checked to be registered and non-empty).

    ``seed``: default ``cfg.SEED``, or, when that is negative, a random seed shared by all processes.
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported by simformer's training loader; expected 'TrainingSampler'")
    if dataset_dicts is None:
        names = cfg.DATASETS.TRAIN
        check_dataset_names(names, "DATASETS.TRAIN")
        dataset_dicts = []
        for name in names:
            dicts = DatasetCatalog.get(name)
            if not dicts:
                raise ValueError(f"DATASETS.TRAIN: dataset {name!r} is empty (its loader returned no images); expected at least one image")
            dataset_dicts.extend(dicts)
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    logger.info(f"Training loader: {len(dataset_dicts)} images, batches a function of (seed={seed}, iteration)")
    return ResumableTrainLoader(dataset_dicts, mapper, cfg.SOLVER.IMS_PER_BATCH, seed=seed, num_workers=cfg.DATALOADER.NUM_WORKERS)
