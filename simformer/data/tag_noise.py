"""Deterministic noise on image-level tags (``INPUT.WEAKSHOT.TAG_NOISE``), to measure how a weak-shot
recipe copes with the missing and spurious tags of real data.

:func:`noisy_tags` drops each true novel tag of an image with probability ``drop`` and, with
probability ``add``, adds one spurious tag: a novel class the image does not have, chosen uniformly.
The random numbers are a function of ``(seed, image key)`` only, so an image keeps the same noisy tags in
every epoch, on every process and after a resume (noise of a dataset, not of a step), and the tags dropped
at a smaller ``drop`` are a subset of those dropped at a larger one (one uniform number per tag).
"""
import zlib
from typing import Iterable, List, Sequence

import numpy as np

__all__ = ["noisy_tags"]


def noisy_tags(tags: Iterable[int], novel_ids: Sequence[int], key: str, drop: float = 0.0, add: float = 0.0, seed: int = 0) -> List[int]:
    """The noisy tags (sorted novel ids) of the image ``key`` (module doc)."""
    if not (0.0 <= drop <= 1.0 and 0.0 <= add <= 1.0):
        raise ValueError(f"INPUT.WEAKSHOT.TAG_NOISE.DROP / ADD must be in [0, 1], got {drop} / {add}")
    tags = sorted(set(int(t) for t in tags))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(key).encode())])
    u = rng.random(len(tags))
    kept = [t for t, v in zip(tags, u) if v >= drop]
    absent = [int(c) for c in sorted(novel_ids) if int(c) not in tags]
    u_add, pick = rng.random(), rng.random()
    if absent and u_add < add:
        kept.append(absent[min(int(pick * len(absent)), len(absent) - 1)])
    return sorted(kept)
