"""Register weak-shot semantic-segmentation datasets (spec §1.1): base classes have pixel labels, novel
classes only image-level labels. Both kinds feed the same mappers (``WeakShotDatasetMapper``,
``PairDatasetMapper`` in :mod:`simformer.data.dataset_mappers`).

* :func:`register_simulated_weakshot` -- full pixel labels plus a list of novel classes, as in the
  benchmarks. The label PNGs still hold the novel pixels; the mapper hides them (ignore) and turns the
  novel classes into image-level targets. Each dict's ``novel_tags`` (novel classes of the *full* image)
  is computed by the loader from the label file.
* :func:`register_real_weakshot` -- label PNGs with base classes only (novel pixels already = ignore)
  and a tags file listing each image's novel classes::

      JSON     {"<image stem>": ["giraffe", "zebra"], "<stem>": [], ...}
      JSON     {"<image stem>": {"giraffe": 0.93, "zebra": 0.12}, ...}     (scores: tags >= threshold)
      CSV      image,classes                 (header required; classes separated by ';')
               000012,giraffe;zebra          (or giraffe:0.93;zebra:0.12 with scores)
               000013,
      one-hot  image,giraffe,zebra,...       (what labelling tools export: one column per class,
               000012,1,0                     0/1 or a score; a tag when >= threshold)

  Keys are image stems (a file name with an image extension is accepted too); an image the file does
  not mention has no novel class. ``novel_classes`` defaults to every class the tags mention.

Layout and loading are those of :func:`~simformer.data.datasets.folder.register_sem_seg_folder`
(``<image_root>/<stem>.<ext>``, ``<label_root>/<stem>.png``, contiguous ids, 255 = ignore); files are
read when the dataset is loaded (``DatasetCatalog.get``), never at registration.

Dataset dicts: ``file_name``, ``sem_seg_file_name``, ``height``, ``width``, ``image_id`` and
``novel_tags`` (sorted list of novel class ids present in the image). Metadata: ``stuff_classes``,
``stuff_colors``, ``ignore_label``, ``evaluator_type``, ``image_root``, ``sem_seg_root``,
``base_class_ids``, ``novel_class_ids`` (sorted lists), ``weakshot_type`` ("simulated" / "real"), and
``tags_file`` (real) / ``excluded_stems`` (when given) plus any ``extra_metadata``.
"""
import csv
import difflib
import json
import logging
import os
import time
from collections import OrderedDict

import numpy as np
from detectron2.data import DatasetCatalog

from ..pair_table import build_presence_matrix
from .folder import IMAGE_EXTENSIONS, register_sem_seg_folder

__all__ = [
    "WEAKSHOT_TYPES",
    "register_simulated_weakshot",
    "register_real_weakshot",
    "resolve_class_ids",
    "read_tags_file",
    "label_presence",
]

logger = logging.getLogger(__name__)

WEAKSHOT_TYPES = ("simulated", "real")
# Metadata keys set by this module (not allowed in ``extra_metadata``).
_RESERVED_KEYS = ("base_class_ids", "novel_class_ids", "weakshot_type", "tags_file", "excluded_stems")

# In-process memo of label_presence (the dataset loader runs at every DatasetCatalog.get).
_PRESENCE_CACHE = OrderedDict()
_PRESENCE_CACHE_SIZE = 8


# ------------------------------------------------------------------------------------------------
# class names / ids
# ------------------------------------------------------------------------------------------------
def _unknown_class_message(where, name, class_names):
    close = difflib.get_close_matches(name, class_names, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(repr(c) for c in class_names[:8])
    more = ", ..." if len(class_names) > 8 else ""
    return f"{where}: unknown class name {name!r}{hint} Valid names ({len(class_names)} classes): {shown}{more}"


def resolve_class_ids(classes, class_names, where):
    """Class names and/or ids -> sorted list of distinct ids in ``[0, len(class_names))``.

    Raises ``ValueError`` naming ``where`` for an unknown name (with close matches and a few valid
    names), an id out of range or a duplicate; ``TypeError`` for anything but a list of str / int.
    """
    if isinstance(classes, (str, bytes, int, np.integer)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"{where}: expected a list of class names or ids, got {classes!r}")
    index = {name: i for i, name in enumerate(class_names)}
    ids = []
    for c in classes:
        if isinstance(c, (bool, np.bool_)):
            raise TypeError(f"{where}: expected class names or ids, got {c!r}")
        if isinstance(c, (int, np.integer)):
            if not 0 <= c < len(class_names):
                raise ValueError(f"{where}: class id {int(c)} is out of range [0, {len(class_names)})")
            ids.append(int(c))
        elif isinstance(c, str):
            if c not in index:
                raise ValueError(_unknown_class_message(where, c, class_names))
            ids.append(index[c])
        else:
            raise TypeError(f"{where}: expected class names or ids, got {c!r} ({type(c).__name__})")
    if len(set(ids)) != len(ids):
        dups = sorted({class_names[i] for i in ids if ids.count(i) > 1})
        raise ValueError(f"{where}: classes listed more than once: {dups}")
    return sorted(ids)


def _split_ids(novel_ids, num_classes, where):
    """(base ids, novel ids) as sorted lists; at least one of each."""
    if not novel_ids:
        raise ValueError(f"{where}: no novel classes; a weak-shot dataset needs at least one")
    novel = set(novel_ids)
    base = [c for c in range(num_classes) if c not in novel]
    if not base:
        raise ValueError(f"{where}: every class is novel; a weak-shot dataset needs at least one base class")
    return base, sorted(novel)


# ------------------------------------------------------------------------------------------------
# tags file
# ------------------------------------------------------------------------------------------------
def _image_stem(key):
    """``"dir/x.jpg" -> "x"``; a key without an image extension is already a stem."""
    base = os.path.basename(str(key).strip())
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base


def _score(value, where):
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number (0/1 or a score), got {value!r}") from None
    if not np.isfinite(score):
        raise ValueError(f"{where}: expected a finite score, got {value!r}")
    return score


def _read_json_tags(path, threshold):
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"tags file '{path}': invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"tags file '{path}': expected a JSON object {{\"<image stem>\": [class names]}}, got {type(data).__name__}")
    tags = {}
    for key, names in data.items():
        if isinstance(names, dict):  # {class: score}
            names = [n for n, v in names.items() if _score(v, f"tags file '{path}', image '{key}', class '{n}'") >= threshold]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"tags file '{path}': value of image '{key}' must be a list of class names or {{class: score}}, got {names!r}")
        stem = _image_stem(key)
        if stem in tags:
            raise ValueError(f"tags file '{path}': image '{stem}' is listed more than once")
        tags[stem] = [n.strip() for n in names if n.strip()]
    return tags


def _csv_entry(entry, threshold, where):
    """``"giraffe"`` -> tag; ``"giraffe:0.9"`` -> tag when 0.9 >= threshold."""
    name, sep, value = entry.rpartition(":")
    try:
        score = float(value) if sep else None
    except ValueError:  # a colon inside a class name, no score
        score = None
    if score is None:
        return entry
    return name.strip() if _score(score, f"{where}, '{entry}'") >= threshold else None


def _read_csv_tags(path, threshold):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"tags file '{path}': empty; expected a header 'image,classes' or 'image,<class>,<class>,...'")
    header = [h.strip().lower() for h in rows[0]]
    if "image" not in header:
        raise ValueError(f"tags file '{path}': header must have a column 'image' and either 'classes' or one column per class, got {rows[0]}")
    if "classes" not in header:
        return _read_one_hot_tags(path, rows, threshold)
    col_image, col_classes = header.index("image"), header.index("classes")
    tags, line_of = {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header) or len(row) <= col_image:
            raise ValueError(f"tags file '{path}', line {line}: expected columns {rows[0]}, got {row}")
        stem = _image_stem(row[col_image])
        if not stem:
            raise ValueError(f"tags file '{path}', line {line}: empty image name")
        if stem in tags:
            raise ValueError(f"tags file '{path}', line {line}: image '{stem}' already listed on line {line_of[stem]}")
        cell = row[col_classes] if col_classes < len(row) else ""
        entries = [_csv_entry(n.strip(), threshold, f"tags file '{path}', line {line}") for n in cell.split(";") if n.strip()]
        tags[stem] = [n for n in entries if n]
        line_of[stem] = line
    return tags


def _read_one_hot_tags(path, rows, threshold):
    """One column per class (``image,giraffe,zebra``), 0/1 or scores per image."""
    header = [h.strip() for h in rows[0]]
    col_image = [h.lower() for h in header].index("image")
    classes = [(i, h) for i, h in enumerate(header) if i != col_image]
    if not classes or any(not h for _, h in classes):
        raise ValueError(f"tags file '{path}': a one-hot header needs a non-empty class name in every column besides 'image', got {rows[0]}")
    tags, line_of = {}, {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"tags file '{path}', line {line}: expected {len(header)} columns {header}, got {len(row)}")
        stem = _image_stem(row[col_image])
        if not stem:
            raise ValueError(f"tags file '{path}', line {line}: empty image name")
        if stem in tags:
            raise ValueError(f"tags file '{path}', line {line}: image '{stem}' already listed on line {line_of[stem]}")
        tags[stem] = [name for i, name in classes if row[i].strip() and _score(row[i].strip(), f"tags file '{path}', line {line}, column '{name}'") >= threshold]
        line_of[stem] = line
    return tags


def read_tags_file(path, threshold=0.5, aliases=None):
    """``{image stem: [class name, ...]}`` from a ``.json`` or ``.csv`` tags file (formats in the module doc).

    ``threshold``: a class with a score (one-hot column, ``name:score``, ``{name: score}``) is a tag when its
    score is >= threshold (0/1 one-hot values: 1 is a tag). ``aliases``: ``{name in the file: class name}``
    (e.g. ``{"Giraffe": "giraffe", "person": "people"}``), applied before the names are checked."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tags file '{path}' does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        tags = _read_json_tags(path, threshold)
    elif ext == ".csv":
        tags = _read_csv_tags(path, threshold)
    else:
        raise ValueError(f"tags file '{path}': unknown format '{ext}'; expected a .json or .csv file")
    if aliases:
        aliases = {str(k): str(v) for k, v in aliases.items()}
        tags = {stem: list(dict.fromkeys(aliases.get(n, n) for n in names)) for stem, names in tags.items()}
    return tags


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def label_presence(label_files, num_classes, ignore_label=255):
    """``(len(label_files), num_classes) bool``: classes present in each label PNG.

    One ``bincount`` per file (:func:`~simformer.data.pair_table.build_presence_matrix`), memoised in
    this process by path, size and modification time (the loader runs at every ``DatasetCatalog.get``).
    """
    stats = ((f, os.stat(f)) for f in label_files)
    key = (int(num_classes), int(ignore_label), tuple((f, st.st_size, st.st_mtime_ns) for f, st in stats))
    if key in _PRESENCE_CACHE:
        _PRESENCE_CACHE.move_to_end(key)
        return _PRESENCE_CACHE[key]
    start = time.perf_counter()
    presence = build_presence_matrix(label_files, num_classes, ignore_label=ignore_label)
    presence.setflags(write=False)
    logger.info(f"Read the classes of {len(label_files)} label files in {time.perf_counter() - start:.1f} s")
    _PRESENCE_CACHE[key] = presence
    while len(_PRESENCE_CACHE) > _PRESENCE_CACHE_SIZE:
        _PRESENCE_CACHE.popitem(last=False)
    return presence


class _WeakShotLoader:
    """The folder loader of a dataset, minus excluded stems, plus ``novel_tags`` (simulated / real).

    ``kind`` is "full" (no weak-shot fields), "simulated" or "real"; ``tags`` maps stem -> tuple of
    novel ids (real only).
    """

    def __init__(self, name, folder_loader, kind, exclude_stems, num_classes, ignore_label, novel_ids=(), tags=None, tags_file=None):
        self.name = name
        self.folder_loader = folder_loader
        self.kind = kind
        self.exclude_stems = frozenset(exclude_stems)
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.novel_ids = tuple(novel_ids)
        self.tags = dict(tags or {})
        self.tags_file = tags_file

    def _key(self):
        return (self.name, self.kind, self.exclude_stems, self.num_classes, self.ignore_label, self.novel_ids, self.tags)

    def __eq__(self, other):
        return isinstance(other, _WeakShotLoader) and self._key() == other._key()

    def __call__(self):
        dicts = self.folder_loader()
        if self.exclude_stems:
            dicts = [d for d in dicts if d["image_id"] not in self.exclude_stems]
        if self.kind == "simulated":
            self._add_label_tags(dicts)
        elif self.kind == "real":
            self._add_file_tags(dicts)
        return dicts

    def _add_label_tags(self, dicts):
        try:
            presence = label_presence([d["sem_seg_file_name"] for d in dicts], self.num_classes, self.ignore_label)
        except ValueError as e:
            raise ValueError(f"dataset '{self.name}': {e}") from e
        novel = np.asarray(self.novel_ids, dtype=np.int64)
        present = presence[:, novel]  # (N, n)
        ids = np.broadcast_to(novel, present.shape)[present]  # row-major: image by image, ascending
        per_image = np.split(ids, np.cumsum(present.sum(axis=1))[:-1])
        for d, tags in zip(dicts, per_image):
            d["novel_tags"] = tags.tolist()

    def _add_file_tags(self, dicts):
        stems = {d["image_id"] for d in dicts}
        unknown = sorted(set(self.tags) - stems - self.exclude_stems)
        if unknown:
            shown = ", ".join(f"'{s}'" for s in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            image_root = os.path.dirname(dicts[0]["file_name"]) if dicts else "?"
            raise ValueError(
                f"dataset '{self.name}': tags file '{self.tags_file}' has tags for {len(unknown)} image(s) that are "
                f"not in image_root '{image_root}': {shown}"
            )
        for d in dicts:
            d["novel_tags"] = list(self.tags.get(d["image_id"], ()))


# keyword arguments of the registrations that go to register_sem_seg_folder (the rest become metadata)
FOLDER_OPTIONS = ("image_ext", "label_ext", "ignore_label", "colors", "evaluator_type", "prepare", "label_mapping", "label_cache_dir")


def _split_options(options):
    """Registration keyword arguments -> (register_sem_seg_folder options, extra metadata)."""
    folder = {k: v for k, v in options.items() if k in FOLDER_OPTIONS}
    return folder, {k: v for k, v in options.items() if k not in FOLDER_OPTIONS}


def _register(name, image_root, label_root, class_names, *, kind, folder, extra_metadata, novel_ids=(), tags=None, tags_file=None, exclude_stems=()):
    """register_sem_seg_folder(``folder`` options: validation, metadata, lazy folder loader) wrapped by
    :class:`_WeakShotLoader`."""
    extra_metadata = dict(extra_metadata)
    exclude_stems = frozenset(str(s) for s in exclude_stems)
    if exclude_stems:
        extra_metadata["excluded_stems"] = sorted(exclude_stems)
    meta = register_sem_seg_folder(name, image_root, label_root, class_names, **folder, **extra_metadata)
    registered = DatasetCatalog[name]
    ignore_label = folder.get("ignore_label", 255)
    loader = _WeakShotLoader(
        name,
        registered.folder_loader if isinstance(registered, _WeakShotLoader) else registered,
        kind,
        exclude_stems,
        len(class_names),
        ignore_label,
        novel_ids,
        tags,
        tags_file,
    )
    if isinstance(registered, _WeakShotLoader):  # same metadata (checked by register_sem_seg_folder)
        if registered != loader:
            raise ValueError(f"dataset '{name}' is already registered with different tags or excluded images")
        return meta
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    return meta


def _check_extra(where, extra_metadata):
    clash = sorted(set(extra_metadata) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"{where}: metadata keys {clash} are set by this function; do not pass them")


def _class_list(where, class_names):
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"{where}: class_names must be a non-empty list of names, got {class_names!r}")
    return [str(c) for c in class_names]


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def register_simulated_weakshot(name, image_root, label_root, class_names, novel_classes, *, exclude_stems=(), **options):
    """Register ``name``: full pixel labels, with ``novel_classes`` (names or ids) treated as weak-shot.

    The label PNGs hold every class; ``WeakShotDatasetMapper`` hides the novel pixels. The loader adds
    ``novel_tags`` (novel classes in the full-image label) to each dict. ``exclude_stems``: images to
    drop. ``options``: the keyword arguments of
    :func:`~simformer.data.datasets.folder.register_sem_seg_folder` (:data:`FOLDER_OPTIONS`: ``image_ext``,
    ``label_ext``, ``ignore_label``, ``colors``, ``evaluator_type``, ``prepare``, ``label_mapping`` for label
    files that are not train ids, ``label_cache_dir``); any other keyword becomes metadata (e.g.
    ``split_name``). Returns the ``Metadata``.
    """
    where = f"register_simulated_weakshot('{name}')"
    class_names = _class_list(where, class_names)
    folder, extra_metadata = _split_options(options)
    _check_extra(where, extra_metadata)
    novel_ids = resolve_class_ids(novel_classes, class_names, f"{where}, novel_classes")
    base_ids, novel_ids = _split_ids(novel_ids, len(class_names), where)
    extra_metadata.update(base_class_ids=base_ids, novel_class_ids=novel_ids, weakshot_type="simulated")
    return _register(name, image_root, label_root, class_names, kind="simulated", folder=folder, extra_metadata=extra_metadata, novel_ids=novel_ids, exclude_stems=exclude_stems)


def register_real_weakshot(name, image_root, label_root, class_names, tags_file, novel_classes=None, *, exclude_stems=(), tag_threshold=0.5, tag_aliases=None, **options):
    """Register ``name``: base-only label PNGs (novel pixels = ``ignore_label``) + image-level novel tags.

    ``tags_file`` (``.json`` or ``.csv``, see the module doc) is read now, because ``novel_classes``
    (names or ids) defaults to every class it mentions; every tag must name a class of ``class_names``
    that is novel. At load time, tags for an image that is not in ``image_root`` are an error, and each
    dict gets ``novel_tags`` from the file (empty for images it does not list). The mapper rejects a
    label PNG that contains novel pixels. ``tag_threshold`` / ``tag_aliases``: scores and other class
    names in the tags file (:func:`read_tags_file`). Other arguments as :func:`register_simulated_weakshot`.
    """
    where = f"register_real_weakshot('{name}')"
    class_names = _class_list(where, class_names)
    folder, extra_metadata = _split_options(options)
    _check_extra(where, extra_metadata)
    tags_file = os.path.abspath(os.path.expanduser(str(tags_file)))
    try:
        raw_tags = read_tags_file(tags_file, threshold=tag_threshold, aliases=tag_aliases)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from e
    tag_ids = {stem: resolve_class_ids(names, class_names, f"{where}: tags file '{tags_file}', image '{stem}'") for stem, names in raw_tags.items()}
    if novel_classes is None:
        novel_ids = sorted({c for ids in tag_ids.values() for c in ids})
        if not novel_ids:
            raise ValueError(f"{where}: tags file '{tags_file}' lists no class; pass novel_classes or add tags")
    else:
        novel_ids = resolve_class_ids(novel_classes, class_names, f"{where}, novel_classes")
    base_ids, novel_ids = _split_ids(novel_ids, len(class_names), where)
    novel_set = set(novel_ids)
    for stem, ids in tag_ids.items():
        base_tags = [class_names[c] for c in ids if c not in novel_set]
        if base_tags:
            raise ValueError(
                f"{where}: tags file '{tags_file}', image '{stem}': {base_tags} are base classes; tags list novel "
                f"classes only (base classes come from the label PNGs). Novel classes: {[class_names[c] for c in novel_ids]}"
            )
    extra_metadata.update(base_class_ids=base_ids, novel_class_ids=novel_ids, weakshot_type="real", tags_file=tags_file)
    tags = {stem: tuple(ids) for stem, ids in tag_ids.items()}
    return _register(name, image_root, label_root, class_names, kind="real", folder=folder, extra_metadata=extra_metadata, novel_ids=novel_ids, tags=tags, tags_file=tags_file, exclude_stems=exclude_stems)
