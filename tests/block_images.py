"""Shared test data: small images whose colour encodes the class of axis-aligned blocks."""
from typing import Sequence

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances

from simformer import add_simformer_config
from simformer.data.dataset_mappers import label_map_to_targets


def config(path: str, tiny: Sequence[str], *opts):
    """get_cfg + simformer's keys + the YAML at ``path`` + ``tiny`` overrides + ``opts`` (not frozen)."""
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(tiny) + list(opts))
    return cfg


def block_batch(seed: int, n: int, size: int, num_classes: int, colour=(60, 50), ignore: int = 255, instances: bool = False):
    """``n`` training dicts: class c (1..K-1) fills a random 20x20 block of a class-0 (size, size) image,
    colour (c * colour[0], 255 - c * colour[1], noise); the last 4 columns are ``ignore``. ``instances``:
    also the per-class mask targets of the label map."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        label = np.zeros((size, size), np.int64)
        for cls in range(1, num_classes):
            y, x = rng.randint(0, size - 20, 2)
            label[y : y + 20, x : x + 20] = cls
        image = np.stack([label * colour[0], 255 - label * colour[1], rng.randint(0, 40, (size, size))]).astype(np.uint8)
        label[:, -4:] = ignore
        x = {"image": torch.from_numpy(image), "sem_seg": torch.from_numpy(label), "height": size, "width": size}
        if instances:
            inst = Instances((size, size))
            inst.gt_classes, inst.gt_masks = label_map_to_targets(x["sem_seg"], ignore)
            x["instances"] = inst
        out.append(x)
    return out


def per_pixel_tiny(num_classes: int, dim: int):
    """Config overrides of a tiny per-pixel model: K classes, ``dim``-channel pixel decoder, LR 1e-3."""
    return [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", str(dim),
        "MODEL.SEM_SEG_HEAD.MASK_DIM", str(dim),
        "SOLVER.BASE_LR", "1e-3",
    ]  # fmt: skip


def maskformer_tiny(num_classes: int, dim: int):
    """:func:`per_pixel_tiny` plus a tiny query decoder: ``dim``-d, FFN 64, 6 queries, 2 layers."""
    return per_pixel_tiny(num_classes, dim) + [
        "MODEL.MASK_FORMER.HIDDEN_DIM", str(dim),
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
        "MODEL.MASK_FORMER.DEC_LAYERS", "2",
    ]  # fmt: skip


def train_steps(model, optimizer, batches):
    """One optimizer step per batch, asserting every loss term finite.
    Returns (the total loss of each step, the last step's loss dict)."""
    history, losses = [], {}
    for batch in batches:
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(float(total.detach()))
    return history, losses
