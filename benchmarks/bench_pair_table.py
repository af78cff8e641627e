"""Time :class:`simformer.data.pair_table.PairTable` construction on a COCO-Stuff-10K-sized dataset.

A random presence matrix of 10,000 images x 171 classes with a long-tailed class frequency (about 8
classes per image; novel = COCO split 1, 43 classes) is built once; the vectorised table is timed
against the official pure-Python double loop, run for a few focus images and extrapolated.

    python benchmarks/bench_pair_table.py [--images 10000] [--repeats 3] [--reference-images 100]
"""
import argparse
import random
import time

import numpy as np
import torch

from simformer.data.datasets.splits import COCO_STUFF_10K_NOVEL_IDS
from simformer.data.pair_table import DEFAULT_CAPS, PairTable


def random_presence(num_images, num_classes=171, mean_classes=8.0, max_freq=0.55, seed=0):
    """Long-tailed class frequencies (Zipf-like, shuffled over class ids) with ``mean_classes`` per
    image; the most frequent class is in ``max_freq`` of the images (person: about half of COCO)."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, num_classes + 1) ** 0.9
    freq = rng.permutation(freq * mean_classes / freq.sum())
    for _ in range(20):  # clip and rescale until the mean holds
        freq = np.minimum(freq * mean_classes / freq.sum(), max_freq)
    return rng.random((num_images, num_classes)) < freq


def official_loop(presence, novel_ids, focus, caps=DEFAULT_CAPS):
    """The official compute_pairs.py double loop (with its novel-common condition) for ``focus`` images."""
    novel = set(novel_ids)
    sets = [
        ({c for c in np.flatnonzero(row) if c in novel}, {c for c in np.flatnonzero(row) if c not in novel})
        for row in presence
    ]
    for i in focus:
        novel_i, base_i = sets[i]
        deconf = {c: set() for c in novel_i}
        novel_common, base_common = set(), set()
        for j, (novel_j, base_j) in enumerate(sets):
            shared = novel_i & novel_j
            if len(shared) == 1:
                (c,) = shared
                deconf[c].add(j)
                if len(deconf[c]) > caps[0]:
                    deconf[c].remove(random.choice(tuple(deconf[c])))
            elif len(novel_i) >= 2:
                novel_common.add(j)
                if len(novel_common) > caps[1]:
                    novel_common.remove(random.choice(tuple(novel_common)))
            if base_i & base_j:
                base_common.add(j)
                if len(base_common) > caps[2]:
                    base_common.remove(random.choice(tuple(base_common)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-freq", type=float, default=0.55, help="frequency of the most frequent class")
    parser.add_argument("--reference-images", type=int, default=100, help="focus images for the official loop")
    args = parser.parse_args()

    novel_ids = COCO_STUFF_10K_NOVEL_IDS[1]
    presence = random_presence(args.images, max_freq=args.max_freq)
    novel = presence[:, list(novel_ids)]
    print(
        f"presence {presence.shape}: {presence.sum(1).mean():.2f} classes/image ({novel.sum(1).mean():.2f} novel; "
        f"most frequent novel class in {novel.mean(0).max():.0%} of images), torch threads {torch.get_num_threads()}"
    )

    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        table = PairTable.build(presence, novel_ids, seed=0)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    print(
        f"PairTable.build: best {min(times):.2f} s, median {np.median(times):.2f} s over {args.repeats} runs "
        f"(process CPU time {min(cpu_times):.2f} s, all threads)"
    )
    for kind in ("deconf", "novel_common", "base_common"):
        cands = getattr(table, f"{kind}_cands")
        print(f"  {kind:13s} {len(cands):>10,d} candidates")

    focus = range(args.reference_images)
    start = time.perf_counter()
    official_loop(presence, novel_ids, focus)
    reference = (time.perf_counter() - start) * args.images / args.reference_images
    print(
        f"official double loop (extrapolated from {args.reference_images} focus images): {reference:.0f} s "
        f"-> vectorised is {reference / min(times):.0f}x faster"
    )


if __name__ == "__main__":
    main()
