"""Partner table for cross-image pairs (spec §1.3, §11), built with chunked matrix products.

For every training image i, with N_i / B_i the novel / base classes present in its full-image GT:

* ``deconf`` (per c in N_i): images j != i with N_i ∩ N_j = {c} exactly; capped at 500.
* ``novel_common``: images j != i with |N_i ∩ N_j| >= 1; capped at 50. This is the *intended*
  condition. The official ``compute_pairs.py`` fills this list only when |N_i| >= 2, and then with every
  j that does *not* share exactly one novel class (including j sharing none), which is a bug (§10.1-8).
  Consequence: with the official lists, images with 0 or 1 novel class practically always fall back to
  ``base_common`` under ``Deconf<p>``; here an image with one novel class c gets partners that contain c.
* ``base_common``: images j != i with |B_i ∩ B_j| >= 1; capped at 50.

Caps are applied by uniform random subsampling without replacement (seeded), the "acceptable
equivalent" of the official random deletion (§11). Lists never contain i itself and are stored CSR-style
(concatenated int32 candidates + int64 offsets), sorted ascending within each list, and read-only:
:class:`PairTable` never mutates them (the official mapper removes A from its cached lists in place).
"""
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zipfile
from functools import lru_cache
from multiprocessing import Pool

import numpy as np
import torch
from PIL import Image

__all__ = [
    "KINDS",
    "DEFAULT_CAPS",
    "PairTable",
    "parse_pair_type",
    "build_presence_matrix",
    "load_or_build_pair_table",
]

logger = logging.getLogger(__name__)

KINDS = ("deconf", "novel_common", "base_common")
DEFAULT_CAPS = (500, 50, 50)  # deconf, novel_common, base_common
# Bump when the table's definition or storage changes: it is part of the cache fingerprint.
_CODE_VERSION = 1
# Elements per (rows x images) chunk of the pairwise products: bounds the peak memory (~0.5 GB).
_CHUNK_ELEMENTS = 1 << 24
_PAIR_TYPE_HELP = "expected 'Deconf<p>' with 0 <= p <= 1 (e.g. 'Deconf0.01'), 'Rand', 'BInter' or 'NInter'"


@lru_cache(maxsize=None)
def parse_pair_type(pair_type):
    """``"Deconf0.01" -> ("Deconf", 0.01)``; ``"Rand" / "BInter" / "NInter" -> (name, None)``."""
    if pair_type in ("Rand", "BInter", "NInter"):
        return pair_type, None
    match = re.fullmatch(r"Deconf([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", str(pair_type))
    if match is None or not 0.0 <= float(match.group(1)) <= 1.0:
        raise ValueError(f"pair_table: unknown pair type {pair_type!r} (INPUT.WEAKSHOT.PAIR_TYPE); {_PAIR_TYPE_HELP}")
    return "Deconf", float(match.group(1))


def _segments_index(starts, lengths):
    """Indices ``starts[k] : starts[k] + lengths[k]`` for every k, concatenated, and their offsets."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, index


def _gather_segments(offsets, order):
    """CSR row gather: new offsets and the value indices that list rows ``order`` one after another."""
    order = np.asarray(order, dtype=np.int64)
    return _segments_index(offsets[order], offsets[order + 1] - offsets[order])


def _sort_within_segments(offsets, values):
    """``values`` (non-negative int32) sorted ascending inside each CSR segment."""
    segment = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    key = (segment << 32) | values.astype(np.int64)
    key.sort()
    return (key & 0xFFFFFFFF).astype(np.int32)


def _capped_dense(keys, cap):
    """Per row of ``keys (R, I)``: at most ``cap`` of its negative entries, uniformly at random.

    ``keys`` is ``uniform[0, 1) - shares`` with ``shares`` in {0, 1}, so candidates are the negative
    entries and ranking by key is a uniform random order among them. Returns ``counts (R,) int64``
    and the kept columns (int32) row by row, ascending within a row.
    """
    num_cols = keys.shape[1]
    values, index = keys.topk(min(cap, num_cols), dim=1, largest=False, sorted=False)
    valid = values < 0
    index = torch.where(valid, index, num_cols).sort(dim=1).values
    return valid.sum(dim=1), index[index < num_cols].to(torch.int32)


def _capped_groups(group, cols, num_groups, num_cols, cap, rng):
    """Deconf selection: at most ``cap`` uniformly random entries per group.

    ``group``/``cols`` are int64 entry arrays; the kept entries come back sorted by (group, col).
    Entries are packed into one int64 (group | random bits | col) and value-sorted, which NumPy does
    several times faster than an argsort.
    """
    col_bits = max(1, int(num_cols - 1).bit_length())
    group_bits = max(1, int(num_groups - 1).bit_length())
    sizes = np.bincount(group, minlength=num_groups)
    if len(group) and sizes.max() > cap:
        rand_bits = 63 - col_bits - group_bits
        if rand_bits < 16:
            raise ValueError(f"pair_table: {num_groups} groups x {num_cols} images per chunk leave too few random bits")
        key = (group << (rand_bits + col_bits)) | (rng.integers(0, 1 << rand_bits, len(group)) << col_bits) | cols
        key.sort()
        _, keep = _segments_index(np.cumsum(sizes) - sizes, np.minimum(sizes, cap))
        key = key[keep]
        group, cols = key >> (rand_bits + col_bits), key & ((1 << col_bits) - 1)
    key = (group << col_bits) | cols
    key.sort()
    return key >> col_bits, key & ((1 << col_bits) - 1)


class PairTable:
    """Read-only CSR partner lists of a dataset, indexed by dataset position.

    Arrays (``I`` images, ``G`` = number of (image, novel class present) groups):

    * ``deconf_img_ptr (I+1,)``: groups of image i are ``deconf_img_ptr[i]:deconf_img_ptr[i+1]``;
    * ``deconf_cls (G,) int32``: the novel class (dataset id) of each group, ascending per image;
    * ``deconf_offsets (G+1,)`` / ``deconf_cands``: candidates of each group;
    * ``novel_common_offsets (I+1,)`` / ``novel_common_cands``; ``base_common_offsets`` / ``base_common_cands``.
    """

    _ARRAYS = (
        "deconf_img_ptr",
        "deconf_cls",
        "deconf_offsets",
        "deconf_cands",
        "novel_common_offsets",
        "novel_common_cands",
        "base_common_offsets",
        "base_common_cands",
    )

    def __init__(self, num_images, novel_ids, caps, **arrays):
        missing = [name for name in self._ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"PairTable: missing arrays {missing}")
        self.num_images = int(num_images)
        self.novel_ids = tuple(int(c) for c in novel_ids)
        self.caps = tuple(int(c) for c in caps)
        for name in self._ARRAYS:
            dtype = np.int32 if name.endswith(("_cands", "_cls")) else np.int64
            array = np.array(arrays[name], dtype=dtype)  # private copy, then frozen
            array.setflags(write=False)
            setattr(self, name, array)
        for name in ("deconf_img_ptr", "novel_common_offsets", "base_common_offsets"):
            if len(getattr(self, name)) != self.num_images + 1:
                raise ValueError(
                    f"PairTable: {name} has {len(getattr(self, name))} entries, expected {self.num_images + 1}"
                )

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, presence, novel_ids, caps=DEFAULT_CAPS, seed=0, chunk_rows=None):
        """Build from ``presence (I, K) bool`` (class k present in image i's full GT).

        Intersection sizes are float32 matrix products over row chunks (exact: integer sums below
        2^24). One product serves both novel lists: class c of the n novel classes contributes
        n² + c, so a pair shares exactly one novel class iff n² <= value < 2n², and that class is
        value - n².
        """
        presence = np.asarray(presence)
        if presence.ndim != 2:
            raise ValueError(f"PairTable.build: presence must be (images, classes), got shape {presence.shape}")
        presence = presence.astype(bool, copy=False)
        num_images, num_classes = presence.shape
        novel = np.asarray(sorted(int(c) for c in novel_ids), dtype=np.int64)
        if len(np.unique(novel)) != len(novel) or (len(novel) and not 0 <= novel[0] <= novel[-1] < num_classes):
            raise ValueError(
                f"PairTable.build: novel_ids must be distinct ids in [0, {num_classes}), got {novel.tolist()}"
            )
        if len(caps) != 3 or min(caps) < 1:
            raise ValueError(
                f"PairTable.build: caps must be 3 positive ints (deconf, novel_common, base_common), got {caps}"
            )
        cap_deconf, cap_novel, cap_base = (int(c) for c in caps)
        rng = np.random.default_rng(int(seed))

        is_novel = np.zeros(num_classes, dtype=bool)
        is_novel[novel] = True
        num_novel = len(novel)
        square = float(max(num_novel, 1) ** 2)
        dtype = torch.float32 if num_novel * (square + num_novel) < 2**24 else torch.float64
        novel_mat = torch.from_numpy(presence[:, is_novel]).to(dtype)
        novel_weighted = (novel_mat * (square + torch.arange(num_novel, dtype=dtype))).T.contiguous()
        base_mat = torch.from_numpy(presence[:, ~is_novel]).to(torch.float32)
        base_mat_t = base_mat.T.contiguous()

        rows_per_chunk = chunk_rows or max(1, _CHUNK_ELEMENTS // max(num_images, 1))
        parts = {name: [] for name in ("deconf_groups", "deconf", "novel_counts", "novel", "base_counts", "base")}
        for start in range(0, num_images, rows_per_chunk):
            stop = min(start + rows_per_chunk, num_images)
            local = torch.arange(stop - start)

            value = novel_mat[start:stop] @ novel_weighted  # (R, I): count·n² + Σ shared class indices
            value[local, local + start] = 0  # never pair an image with itself
            one_shared = ((value >= square) & (value < 2 * square)).numpy()
            flat = np.flatnonzero(one_shared)
            shared_cls = (value.numpy()[one_shared] - square).astype(np.int64)
            group = (flat // num_images) * num_novel + shared_cls
            group, cols = _capped_groups(
                group, flat % num_images, (stop - start) * num_novel, num_images, cap_deconf, rng
            )
            parts["deconf_groups"].append(group + start * num_novel)
            parts["deconf"].append(cols)
            del one_shared, flat, shared_cls

            keys = torch.from_numpy(rng.random(value.shape, dtype=np.float32))
            keys.sub_(value.clamp_(max=1.0).to(torch.float32))
            counts, cols = _capped_dense(keys, cap_novel)
            parts["novel_counts"].append(counts)
            parts["novel"].append(cols)

            shared = base_mat[start:stop] @ base_mat_t  # (R, I): number of shared base classes
            shared[local, local + start] = 0
            keys = torch.from_numpy(rng.random(shared.shape, dtype=np.float32))
            keys.sub_(shared.clamp_(max=1.0))
            counts, cols = _capped_dense(keys, cap_base)
            parts["base_counts"].append(counts)
            parts["base"].append(cols)
            del value, shared, keys

        def cat(name, dtype):
            arrays = [np.asarray(a) for a in parts[name]]
            return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)

        def offsets(counts):
            out = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=out[1:])
            return out

        present_novel = presence[:, is_novel]  # (I, n): the groups, image-major, class ascending
        group_sizes = np.bincount(cat("deconf_groups", np.int64), minlength=num_images * num_novel)
        group_sizes = group_sizes.reshape(num_images, num_novel)[present_novel]
        return cls(
            num_images,
            novel.tolist(),
            (cap_deconf, cap_novel, cap_base),
            deconf_img_ptr=offsets(present_novel.sum(axis=1)),
            deconf_cls=np.broadcast_to(novel, present_novel.shape)[present_novel],
            deconf_offsets=offsets(group_sizes),
            deconf_cands=cat("deconf", np.int32),
            novel_common_offsets=offsets(cat("novel_counts", np.int64)),
            novel_common_cands=cat("novel", np.int32),
            base_common_offsets=offsets(cat("base_counts", np.int64)),
            base_common_cands=cat("base", np.int32),
        )

    def reindexed(self, new_to_old):
        """The same table for the images listed in the order ``new_to_old`` (a permutation)."""
        new_to_old = np.asarray(new_to_old, dtype=np.int64)
        if sorted(new_to_old.tolist()) != list(range(self.num_images)):
            raise ValueError(f"PairTable.reindexed: expected a permutation of range({self.num_images})")
        old_to_new = np.argsort(new_to_old).astype(np.int32)
        arrays = {}
        for kind in ("novel_common", "base_common"):
            off, index = _gather_segments(getattr(self, f"{kind}_offsets"), new_to_old)
            arrays[f"{kind}_offsets"] = off
            arrays[f"{kind}_cands"] = _sort_within_segments(off, old_to_new[getattr(self, f"{kind}_cands")[index]])
        arrays["deconf_img_ptr"], group_index = _gather_segments(self.deconf_img_ptr, new_to_old)
        arrays["deconf_cls"] = self.deconf_cls[group_index]
        arrays["deconf_offsets"], index = _gather_segments(self.deconf_offsets, group_index)
        arrays["deconf_cands"] = _sort_within_segments(arrays["deconf_offsets"], old_to_new[self.deconf_cands[index]])
        return PairTable(self.num_images, self.novel_ids, self.caps, **arrays)

    # ------------------------------------------------------------------------------------------
    # storage
    # ------------------------------------------------------------------------------------------
    def state_dict(self):
        """Plain arrays for ``np.savez``."""
        state = {name: getattr(self, name) for name in self._ARRAYS}
        state.update(num_images=np.int64(self.num_images), novel_ids=np.asarray(self.novel_ids, np.int64))
        state.update(caps=np.asarray(self.caps, np.int64))
        return state

    @classmethod
    def from_state_dict(cls, state):
        arrays = {name: state[name] for name in cls._ARRAYS}
        return cls(int(state["num_images"]), state["novel_ids"].tolist(), state["caps"].tolist(), **arrays)

    # ------------------------------------------------------------------------------------------
    # queries
    # ------------------------------------------------------------------------------------------
    def _check_image(self, i):
        if not 0 <= i < self.num_images:
            raise IndexError(f"PairTable: image index {i} outside [0, {self.num_images})")

    def novel_classes(self, i):
        """Novel classes (dataset ids) present in image i's full GT, ascending (read-only view)."""
        self._check_image(i)
        return self.deconf_cls[self.deconf_img_ptr[i] : self.deconf_img_ptr[i + 1]]

    def candidates(self, i, kind, cls=None):
        """Partner candidates of image i (read-only int32 view).

        ``kind`` is one of :data:`KINDS`; ``"deconf"`` needs ``cls``, a novel class id (an empty array
        if it is not present in image i).
        """
        self._check_image(i)
        if kind == "deconf":
            if cls is None or int(cls) not in self.novel_ids:
                raise ValueError(f"PairTable.candidates: kind 'deconf' needs cls, one of the novel ids; got {cls!r}")
            lo, hi = self.deconf_img_ptr[i], self.deconf_img_ptr[i + 1]
            hit = np.flatnonzero(self.deconf_cls[lo:hi] == int(cls))
            if len(hit) == 0:
                return self.deconf_cands[:0]
            group = lo + hit[0]
            return self.deconf_cands[self.deconf_offsets[group] : self.deconf_offsets[group + 1]]
        if kind not in ("novel_common", "base_common"):
            raise ValueError(f"PairTable.candidates: unknown kind {kind!r}, expected one of {KINDS}")
        if cls is not None:
            raise ValueError(f"PairTable.candidates: cls is only meaningful for kind 'deconf', got kind {kind!r}")
        offsets = getattr(self, f"{kind}_offsets")
        return getattr(self, f"{kind}_cands")[offsets[i] : offsets[i + 1]]

    def sample_partner(self, i, pair_type, rng, deconf_single=False):
        """Partner image index for focus image i (``CROSS_IMG_SIM.PAIR_TYPE`` rule of spec §1.3).

        * ``Deconf<p>``: if i has >= 2 novel classes, pick with probability p the novel class with the
          fewest deconf candidates (an empty list counts as the deconf cap; ties -> smallest id), else
          one uniformly; draw from its deconf list, or return i if that list is empty. Otherwise use
          ``novel_common``, then ``base_common``, then i itself.
        * ``Rand``: any other image. ``BInter``: base_common, novel_common, self. ``NInter``:
          novel_common, base_common, self.

        A list is used when it holds >= 1 candidate: our lists exclude i, so this is the official
        "≥ 2 entries" test on lists that still contained i. ``deconf_single=True`` (not the official
        behaviour) also sends images with exactly one novel class to that class's deconf list, falling
        back to the common lists when it is empty. ``rng`` is a ``np.random.Generator``; the partner is
        drawn uniformly and nothing stored is modified.
        """
        self._check_image(i)
        mode, p = parse_pair_type(pair_type)
        if mode == "Rand":
            if self.num_images < 2:
                return i
            j = int(rng.integers(self.num_images - 1))
            return j + (j >= i)
        if mode == "Deconf":
            lo, hi = int(self.deconf_img_ptr[i]), int(self.deconf_img_ptr[i + 1])
            num_novel = hi - lo
            if num_novel >= 2 or (deconf_single and num_novel == 1):
                sizes = np.diff(self.deconf_offsets[lo : hi + 1])
                if num_novel >= 2 and rng.random() < p:
                    group = lo + int(np.argmin(np.where(sizes == 0, self.caps[0], sizes)))
                else:
                    group = lo + int(rng.integers(num_novel))
                cands = self.deconf_cands[self.deconf_offsets[group] : self.deconf_offsets[group + 1]]
                if len(cands) or num_novel >= 2:
                    return int(cands[rng.integers(len(cands))]) if len(cands) else i
            order = ("novel_common", "base_common")
        elif mode == "BInter":
            order = ("base_common", "novel_common")
        else:
            order = ("novel_common", "base_common")
        for kind in order:
            cands = self.candidates(i, kind)
            if len(cands):
                return int(cands[rng.integers(len(cands))])
        return i


# ----------------------------------------------------------------------------------------------
# presence matrix and cache
# ----------------------------------------------------------------------------------------------
def _class_counts(args):
    path, num_classes, ignore_label = args
    try:
        with Image.open(path) as image:
            label = np.asarray(image)
    except (OSError, ValueError) as e:
        raise ValueError(f"pair_table: cannot read label PNG {path}: {e}") from e
    if label.ndim != 2 or label.dtype.kind not in "iu":
        raise ValueError(
            f"pair_table: {path} is not a single-channel integer label map (shape {label.shape}, {label.dtype})"
        )
    counts = np.bincount(label.ravel().astype(np.int64, copy=False), minlength=num_classes)
    bad = np.flatnonzero(counts[num_classes:]) + num_classes
    bad = bad[bad != ignore_label]
    if len(bad):
        raise ValueError(
            f"pair_table: {path} holds ids {bad[:10].tolist()} outside [0, {num_classes}) and != ignore {ignore_label}"
        )
    return counts[:num_classes] > 0


def build_presence_matrix(label_files, num_classes, ignore_label=255, workers=0):
    """``(len(label_files), num_classes) bool``: which classes each label PNG contains."""
    jobs = [(str(path), int(num_classes), int(ignore_label)) for path in label_files]
    if workers and workers > 1 and len(jobs) > 1:
        with Pool(workers) as pool:
            rows = pool.map(_class_counts, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        rows = [_class_counts(job) for job in jobs]
    return np.stack(rows) if rows else np.zeros((0, num_classes), dtype=bool)


def _fingerprint(label_files, num_classes, ignore_label, novel_ids, caps, seed, extra=None):
    entries = []
    for path in sorted(label_files):
        try:
            st = os.stat(path)
        except OSError as e:
            raise FileNotFoundError(f"pair_table: label file {path} of the dataset dicts is missing: {e}") from e
        entries.append([path, st.st_size, st.st_mtime_ns])
    payload = {
        "files": entries,
        "num_classes": int(num_classes),
        "ignore_label": int(ignore_label),
        "novel_ids": sorted(int(c) for c in novel_ids),
        "caps": [int(c) for c in caps],
        "seed": int(seed),
        "version": _CODE_VERSION,
        "extra": extra,
    }
    return hashlib.sha1(json.dumps(payload).encode()).hexdigest()


def load_or_build_pair_table(
    dataset_dicts, num_classes, novel_ids, cache_dir, caps=DEFAULT_CAPS, seed=0, ignore_label=255, workers=0,
    presence_fn=None, fingerprint_extra=None,
):
    """The :class:`PairTable` of ``dataset_dicts`` (indexed like it), cached in ``cache_dir``.

    Class presence is read from the label PNGs, or, on a cache miss, taken from ``presence_fn()`` ((I, K)
    bool, e.g. base labels plus image tags for real weak-shot data); whatever it depends on beyond the
    label files goes into ``fingerprint_extra`` (JSON-serialisable).

    The cache file ``pair_table_<fingerprint>.npz`` is keyed by a sha1 over the sorted label paths with
    their sizes and mtimes, the novel ids, caps, seed and the code version, so a changed dataset or split
    rebuilds. The file is written atomically (temp file + ``os.replace``); a cached table built for the
    same files in another order is re-indexed.
    """
    try:
        label_files = [str(d["sem_seg_file_name"]) for d in dataset_dicts]
    except KeyError as e:
        raise KeyError("load_or_build_pair_table: every dataset dict needs 'sem_seg_file_name'") from e
    key = _fingerprint(label_files, num_classes, ignore_label, novel_ids, caps, seed, fingerprint_extra)
    path = os.path.join(cache_dir, f"pair_table_{key}.npz")
    if os.path.isfile(path):
        start = time.perf_counter()
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {name: data[name] for name in data.files}
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
            logger.warning(f"pair_table: cannot read cache {path} ({e}); rebuilding it")
        else:
            table = PairTable.from_state_dict(state)
            cached_files = state["label_files"].tolist()
            if cached_files != label_files:
                position = {f: k for k, f in enumerate(cached_files)}
                table = table.reindexed([position[f] for f in label_files])
            seconds = time.perf_counter() - start
            logger.info(f"Loaded pair table of {table.num_images} images from {path} in {seconds:.2f} s")
            return table

    start = time.perf_counter()
    if presence_fn is not None:
        presence = presence_fn()
    else:
        presence = build_presence_matrix(label_files, num_classes, ignore_label=ignore_label, workers=workers)
    scanned = time.perf_counter()
    table = PairTable.build(presence, novel_ids, caps=caps, seed=seed)
    logger.info(
        f"Built pair table of {len(label_files)} images in {time.perf_counter() - start:.1f} s "
        f"(label scan {scanned - start:.1f} s); caching it at {path}"
    )
    os.makedirs(cache_dir, exist_ok=True)
    state = table.state_dict()
    state["label_files"] = np.asarray(label_files, dtype=np.str_)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".pair_table_", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **state)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return table
