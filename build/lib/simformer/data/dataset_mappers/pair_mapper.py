"""Pair mapper for cross-image training (spec §1.3): every sample comes with a partner image."""
import logging
import os

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, DatasetFromList

from ..pair_table import DEFAULT_CAPS, build_presence_matrix, load_or_build_pair_table, parse_pair_type
from .build import MAPPER_REGISTRY
from .weakshot_mapper import WeakShotDatasetMapper

__all__ = ["PairDatasetMapper", "build_pair_table", "default_pair_cache_dir", "check_pair_type"]

logger = logging.getLogger(__name__)

# Part of the fingerprint of tag-based (real weak-shot) tables: bump when their definition changes.


def check_pair_type(pair_type):
    """Validate ``INPUT.WEAKSHOT.PAIR_TYPE``; returns it unchanged."""
    try:
        parse_pair_type(pair_type)
    except ValueError:
        raise ValueError(
            f"INPUT.WEAKSHOT.PAIR_TYPE={pair_type!r} is not a pair type; expected 'Deconf<p>' with 0 <= p <= 1 "
            "(e.g. 'Deconf0.01'), 'Rand', 'BInter' or 'NInter'"
        ) from None
    return pair_type


def default_pair_cache_dir(dataset_dicts):
    """``<folder of the first label file>/../pair_cache``."""
    if not dataset_dicts:
        raise ValueError("default_pair_cache_dir: empty dataset")
    return os.path.normpath(os.path.join(os.path.dirname(dataset_dicts[0]["sem_seg_file_name"]), os.pardir, "pair_cache"))


def _tagged_presence(dataset_dicts, num_classes, novel_ids, ignore_label):
    """Presence from the base-only label PNGs, with the novel columns from each dict's ``novel_tags``."""
    presence = build_presence_matrix([d["sem_seg_file_name"] for d in dataset_dicts], num_classes, ignore_label=ignore_label)
    novel = np.asarray(novel_ids, dtype=np.int64)
    leaked = np.flatnonzero(presence[:, novel].any(axis=1))
    if len(leaked):
        raise ValueError(
            f"{dataset_dicts[leaked[0]]['sem_seg_file_name']}: real weak-shot label map holds pixels of novel classes "
            f"({len(leaked)} such files); novel pixels must be the ignore value {ignore_label}"
        )
    tags = [d["novel_tags"] for d in dataset_dicts]
    rows = np.repeat(np.arange(len(tags)), [len(t) for t in tags])
    presence[rows, np.concatenate([np.asarray(t, dtype=np.int64) for t in tags] or [np.zeros(0, np.int64)])] = True
    return presence


def build_pair_table(dataset_dicts, num_classes, novel_class_ids, weakshot_type, cache_dir, ignore_label=255, caps=DEFAULT_CAPS, seed=0):
    """The partner table of ``dataset_dicts`` (indexed like it), built once and cached in ``cache_dir``.

    Class presence comes from the full-image labels (``weakshot_type="simulated"``) or from the base
    labels plus each dict's ``novel_tags`` (``"real"``).
    """
    if weakshot_type == "simulated":
        return load_or_build_pair_table(dataset_dicts, num_classes, novel_class_ids, cache_dir, caps=caps, seed=seed, ignore_label=ignore_label)
    if weakshot_type == "real":
        tags = [sorted(int(c) for c in d["novel_tags"]) for d in dataset_dicts]
        return load_or_build_pair_table(
            dataset_dicts, num_classes, novel_class_ids, cache_dir, caps=caps, seed=seed, ignore_label=ignore_label,
            presence_fn=lambda: _tagged_presence(dataset_dicts, num_classes, novel_class_ids, ignore_label),
            fingerprint_extra={"novel_tags": tags},
        )
    raise ValueError(f"build_pair_table: weakshot_type must be 'simulated' or 'real', got {weakshot_type!r}")


@MAPPER_REGISTRY.register()
class PairDatasetMapper:
    """dataset dict -> the weak-shot mapper's dict of that image, with ``"pair"`` = the mapped dict of a
    partner image chosen by ``pair_type`` (``INPUT.WEAKSHOT.PAIR_TYPE``, rule of spec §1.3 in
    :meth:`PairTable.sample_partner`). Focus and partner are read and augmented independently. Batches
    may hold any number of pairs.

    The partner table is built from the training dataset (``DATASETS.TRAIN[0]``) when the mapper is
    built, and cached (``INPUT.WEAKSHOT.PAIR_CACHE_DIR``, default ``<label folder>/../pair_cache``).
    Partners are drawn with a NumPy generator seeded from ``torch.initial_seed()``, re-created whenever
    that seed changes, so each data-loader worker has its own stream.
    """

    @configurable
    def __init__(self, *, mapper, dataset_dicts, pair_table, pair_type="Deconf0.01"):
        self.mapper = mapper
        self.pair_type = check_pair_type(pair_type)
        if pair_table.num_images != len(dataset_dicts):
            raise ValueError(f"PairDatasetMapper: the pair table has {pair_table.num_images} images, the dataset {len(dataset_dicts)}")
        self.pair_table = pair_table
        self._index = {d["file_name"]: i for i, d in enumerate(dataset_dicts)}
        if len(self._index) != len(dataset_dicts):
            raise ValueError("PairDatasetMapper: the dataset lists some file_name more than once")
        # serialized once: workers share the bytes instead of touching (and copying) many Python objects
        self._dicts = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self._rng, self._rng_seed = None, None

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if not is_train:
            raise ValueError("PairDatasetMapper is a training mapper (is_train=False given)")
        if len(cfg.DATASETS.TRAIN) != 1:
            raise ValueError(f"PairDatasetMapper: partners come from one training dataset, DATASETS.TRAIN has {tuple(cfg.DATASETS.TRAIN)}")
        pair_type = check_pair_type(cfg.INPUT.WEAKSHOT.PAIR_TYPE)
        mapper = WeakShotDatasetMapper(cfg, is_train)
        dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
        cache_dir = cfg.INPUT.WEAKSHOT.PAIR_CACHE_DIR or default_pair_cache_dir(dicts)
        table = build_pair_table(dicts, mapper.num_classes, mapper.novel_class_ids, mapper.weakshot_type, cache_dir, mapper.ignore_label)
        return {"mapper": mapper, "dataset_dicts": dicts, "pair_table": table, "pair_type": pair_type}

    def _generator(self):
        seed = torch.initial_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def index_of(self, dataset_dict):
        """Position of ``dataset_dict`` (by ``file_name``) in the training dataset."""
        i = self._index.get(dataset_dict["file_name"])
        if i is None:
            raise KeyError(f"PairDatasetMapper: '{dataset_dict['file_name']}' is not an image of the training dataset (DATASETS.TRAIN[0])")
        return i

    def partner_index(self, i):
        """A partner of dataset image ``i`` drawn by the pair type's rule."""
        return self.pair_table.sample_partner(i, self.pair_type, self._generator())

    def __call__(self, dataset_dict):
        partner = self.partner_index(self.index_of(dataset_dict))
        out = self.mapper(dataset_dict)
        out["pair"] = self.mapper(self._dicts[partner])
        return out
