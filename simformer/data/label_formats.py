"""Label maps that are not train ids, converted once into train-id PNGs (cached) before training reads them.

Users' label files often hold something else than the contiguous ids ``0..K-1`` (255 = ignore) that the
rest of the project reads (:mod:`.image_io`, :func:`~.datasets.folder.register_sem_seg_folder`):

* :meth:`LabelMapping.from_ids` -- non-contiguous ids (e.g. COCO's 1..182 with gaps, Cityscapes' 0..33):
  ``{raw id: train id or ignore}``;
* :meth:`LabelMapping.from_palette` -- RGB colour PNGs: ``{(r, g, b): train id or ignore}``;
* :meth:`LabelMapping.binary` -- 0/255 (or 0/1) masks of one foreground class.

:func:`convert_label_folder` applies a mapping to every label file of a folder (vectorised: one table
look-up per image) and writes the train-id PNGs into a cache folder with a ``mapping.json`` fingerprint
(the mapping and every source file's size and modification time): an unchanged source is not converted
again; a changed mapping or file converts again. A value the mapping does not know (an id not in the map,
a colour not in the palette, a grey level in a binary mask) is an error naming the file, the value, how
many pixels have it and what was expected -- never a silent ignore, which would give an mIoU of 0.
``register_sem_seg_folder(..., label_mapping=...)`` (and the weak-shot registrations) does this for you.
"""
import hashlib
import json
import os
import time
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
from PIL import Image

from ..utils.atomic_io import atomic_write

__all__ = ["LabelMapping", "convert_label_folder", "default_cache_dir"]

KINDS = ("ids", "palette", "binary")
FINGERPRINT_FILE = "mapping.json"


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int64 r * 65536 + g * 256 + b."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class LabelMapping:
    """A table from stored label values (ids or RGB colours) to train ids (``ignore_label`` allowed).

    Use the constructors :meth:`from_ids`, :meth:`from_palette`, :meth:`binary`; ``apply(array, path)``
    maps one label array (errors name ``path``).
    """

    def __init__(self, kind: str, table: Mapping, num_classes: int, ignore_label: int = 255):
        if kind not in KINDS:
            raise ValueError(f"LabelMapping kind must be one of {KINDS}, got {kind!r}")
        if not table:
            raise ValueError("LabelMapping: the table is empty")
        self.kind, self.num_classes, self.ignore_label = kind, int(num_classes), int(ignore_label)
        self.table: Dict = {}
        for raw, train in table.items():
            train = int(train)
            if train != self.ignore_label and not 0 <= train < self.num_classes:
                raise ValueError(f"LabelMapping: value {raw!r} maps to {train}, which is neither a class id in [0, {self.num_classes}) nor the ignore value {self.ignore_label}")
            if kind == "palette":
                rgb = tuple(int(c) for c in raw)
                if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                    raise ValueError(f"LabelMapping: palette colours must be (r, g, b) in 0..255, got {raw!r}")
                raw = rgb
            else:
                raw = int(raw)
                if raw < 0:
                    raise ValueError(f"LabelMapping: stored ids must be >= 0, got {raw}")
            if raw in self.table:
                raise ValueError(f"LabelMapping: value {raw!r} is listed twice")
            self.table[raw] = train
        self._keys = np.array([_rgb_key(np.array(k, dtype=np.uint8)) if kind == "palette" else k for k in self.table], dtype=np.int64)
        order = np.argsort(self._keys)
        self._keys, self._values = self._keys[order], np.array(list(self.table.values()), dtype=np.int64)[order]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_ids(cls, id_map: Mapping[int, int], num_classes: int, ignore_label: int = 255) -> "LabelMapping":
        """Non-contiguous stored ids: ``{stored id: train id}`` (map a value to ``ignore_label`` to ignore it)."""
        return cls("ids", id_map, num_classes, ignore_label)

    @classmethod
    def from_palette(cls, palette: Mapping[Tuple[int, int, int], int], num_classes: int, ignore_label: int = 255) -> "LabelMapping":
        """RGB colour PNGs: ``{(r, g, b): train id}``; e.g. ``{tuple(c): i for i, c in enumerate(colors)}``."""
        return cls("palette", palette, num_classes, ignore_label)

    @classmethod
    def binary(cls, foreground: int, background: int, num_classes: int, ignore_label: int = 255, values: Iterable[int] = (0, 255)) -> "LabelMapping":
        """0/255 masks (``values`` = stored background, foreground values; (0, 1) for 0/1 masks) of one
        ``foreground`` class on ``background`` (a class id or ``ignore_label``)."""
        bg, fg = (int(v) for v in values)
        return cls("binary", {bg: background, fg: foreground}, num_classes, ignore_label)

    def fingerprint(self) -> Dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "table": sorted([list(k) if isinstance(k, tuple) else k, v] for k, v in self.table.items())}  # fmt: skip

    # ------------------------------------------------------------------ mapping
    def apply(self, array: np.ndarray, path: str = "<array>") -> np.ndarray:
        """One stored label array -> (H, W) uint8 (uint16 when K > 255) train ids."""
        if self.kind == "palette":
            if array.ndim != 3 or array.shape[2] not in (3, 4):
                raise ValueError(f"{path}: a palette label must be an RGB image (H, W, 3), got shape {array.shape}")
            keys = _rgb_key(array[..., :3])
        else:
            if array.ndim != 2:
                raise ValueError(f"{path}: expected a single-channel label map (H, W) of {self.kind} values, got shape {array.shape}; an RGB colour label needs LabelMapping.from_palette")
            keys = array.astype(np.int64)
        pos = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        known = self._keys[pos] == keys
        if not known.all():
            values, counts = np.unique(keys[~known], return_counts=True)
            shown = [self._describe(v) for v in values[:5]]
            expected = ", ".join(self._describe(k) for k in self._keys[:8]) + (", ..." if len(self._keys) > 8 else "")
            raise ValueError(f"{path}: {int((~known).sum())} pixels have values not in the {self.kind} mapping: {', '.join(f'{s} ({c} px)' for s, c in zip(shown, counts[:5]))}"
                             f"{' ...' if len(values) > 5 else ''}; expected one of {expected}")  # fmt: skip
        out = self._values[pos]
        return out.astype(np.uint8 if max(self.num_classes - 1, self.ignore_label) <= 255 else np.uint16)

    def _describe(self, key: int) -> str:
        key = int(key)
        return f"colour {(key >> 16 & 255, key >> 8 & 255, key & 255)}" if self.kind == "palette" else f"value {key}"


def _read_raw(path: str, kind: str) -> np.ndarray:
    with Image.open(path) as im:
        # palette labels as RGB; otherwise as stored ("P" keeps its indices; RGB is rejected by apply())
        return np.asarray(im.convert("RGB") if kind == "palette" else im)


def default_cache_dir(label_root: str, mapping: LabelMapping) -> str:
    """``<label_root>_trainids-<8 hex of the mapping>``, next to the source folder."""
    digest = hashlib.sha1(json.dumps(mapping.fingerprint(), sort_keys=True).encode()).hexdigest()[:8]
    return os.path.abspath(label_root).rstrip(os.sep) + f"_trainids-{digest}"


def convert_label_folder(label_root: str, mapping: LabelMapping, cache_dir: Optional[str] = None, label_ext: str = ".png", log=print) -> str:
    """Map every ``*<label_ext>`` file of ``label_root`` into train-id PNGs (same names) in ``cache_dir``
    (default :func:`default_cache_dir`); returns the folder. Nothing is converted when the fingerprint
    of the mapping and of the source files matches the one recorded there. Errors name the file."""
    label_root = os.path.abspath(os.path.expanduser(label_root))
    if not os.path.isdir(label_root):
        raise FileNotFoundError(f"label folder '{label_root}' does not exist")
    cache_dir = os.path.abspath(cache_dir or default_cache_dir(label_root, mapping))
    names = sorted(f for f in os.listdir(label_root) if f.lower().endswith(label_ext) and not f.startswith("."))
    if not names:
        raise FileNotFoundError(f"label folder '{label_root}' has no {label_ext} files")
    sources = [[n, st.st_size, st.st_mtime_ns] for n in names for st in [os.stat(os.path.join(label_root, n))]]
    fingerprint = {"source": label_root, "mapping": mapping.fingerprint(), "files": sources}
    record = os.path.join(cache_dir, FINGERPRINT_FILE)
    if os.path.isfile(record):
        with open(record) as f:
            if json.load(f) == fingerprint:
                return cache_dir
    os.makedirs(cache_dir, exist_ok=True)
    if os.path.isfile(record):
        os.remove(record)  # a partial conversion is never taken for a finished one
    start = time.perf_counter()
    for i, name in enumerate(names):
        src = os.path.join(label_root, name)
        train = mapping.apply(_read_raw(src, mapping.kind), src)
        out = os.path.join(cache_dir, os.path.splitext(name)[0] + ".png")
        atomic_write(out, lambda f: Image.fromarray(train).save(f, format="PNG"))
        if log and (i + 1) % 1000 == 0:
            log(f"converted {i + 1} / {len(names)} label files ({time.perf_counter() - start:.0f} s)")
    atomic_write(record, lambda f: json.dump(fingerprint, f), mode="w")
    if log:
        log(f"Converted {len(names)} label files of {label_root} ({mapping.kind} mapping) -> {cache_dir} in {time.perf_counter() - start:.1f} s")
    return cache_dir
