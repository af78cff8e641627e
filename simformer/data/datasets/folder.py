"""Register a folder of images + label PNGs as a detectron2 semantic-segmentation dataset.

Layout: ``<image_root>/<stem><image_ext>`` and ``<label_root>/<stem><label_ext>``, matched by file stem
(files directly in the folders, hidden files skipped). Label PNG values are contiguous class ids
``0..K-1``; ``ignore_label`` (255) marks pixels without a label.
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..image_io import IMAGE_EXTENSIONS
from ..label_formats import convert_label_folder, default_cache_dir

__all__ = ["IMAGE_EXTENSIONS", "load_sem_seg_folder", "register_sem_seg_folder", "default_class_colors"]

logger = logging.getLogger(__name__)


# Metadata keys set from register_sem_seg_folder's own arguments (not allowed in ``extra_metadata``).
_RESERVED_KEYS = ("stuff_classes", "stuff_colors", "ignore_label", "evaluator_type", "image_root", "sem_seg_root")

# name -> spec of every dataset registered by register_sem_seg_folder (to detect conflicting re-registration).
_SPECS = {}


def _norm_ext(ext, what):
    if not isinstance(ext, str) or not ext:
        raise ValueError(f"{what} must be a non-empty string such as '.png', got {ext!r}")
    ext = ext.lower()
    return ext if ext.startswith(".") else "." + ext


def _list_files(root, exts, what):
    """``{stem: filename}`` of files in ``root`` whose lower-cased extension is in ``exts``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} '{root}' does not exist or is not a directory")
    found = {}
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in exts:
                continue
            if stem in found:
                raise ValueError(f"{what} '{root}' has several files with stem '{stem}': '{found[stem]}' and '{entry.name}'")
            found[stem] = entry.name
    return found


def load_sem_seg_folder(image_root, label_root, image_ext=None, label_ext=".png"):
    """Return detectron2 semantic-segmentation dicts for the matched image/label pairs, sorted by stem.

    Each dict has ``file_name``, ``sem_seg_file_name`` (absolute paths), ``height``, ``width`` (read
    from the image header) and ``image_id`` (the stem). ``image_ext=None`` accepts any of
    :data:`IMAGE_EXTENSIONS`. Raises ``FileNotFoundError`` for a missing folder, no images or images
    without a label file, ``ValueError`` when an image and its label differ in size.
    """
    image_root = os.path.abspath(os.path.expanduser(image_root))
    label_root = os.path.abspath(os.path.expanduser(label_root))
    image_exts = IMAGE_EXTENSIONS if image_ext is None else (_norm_ext(image_ext, "image_ext"),)
    label_ext = _norm_ext(label_ext, "label_ext")

    images = _list_files(image_root, image_exts, "image_root")
    if not os.path.isdir(label_root):
        raise FileNotFoundError(f"label_root '{label_root}' does not exist or is not a directory")
    if not images:
        raise FileNotFoundError(f"no images with extension {'/'.join(image_exts)} found in image_root '{image_root}'")
    labels = _list_files(label_root, (label_ext,), "label_root")

    stems = sorted(images)
    missing = [s for s in stems if s not in labels]
    if missing:
        examples = ", ".join(f"'{images[s]}'" for s in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(stems)} images in image_root '{image_root}' have no label file "
            f"'<stem>{label_ext}' in label_root '{label_root}': {examples}" + (", ..." if len(missing) > 5 else "")
        )

    dicts = []
    for stem in stems:
        image_file = os.path.join(image_root, images[stem])
        label_file = os.path.join(label_root, labels[stem])
        with Image.open(image_file) as im:  # reads the header only
            width, height = im.size
        with Image.open(label_file) as lab:
            if lab.size != (width, height):
                raise ValueError(
                    f"label '{label_file}' is {lab.size[0]}x{lab.size[1]} (WxH) but image '{image_file}' is {width}x{height}"
                )
        dicts.append(
            {"file_name": image_file, "sem_seg_file_name": label_file, "height": height, "width": width, "image_id": stem}
        )
    logger.info(f"Loaded {len(dicts)} images with semantic segmentation from {image_root}")
    return dicts


def default_class_colors(num_classes):
    """``num_classes`` distinct, deterministic RGB colours (golden-ratio hue steps, 3 brightness levels)."""
    import colorsys

    colors = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.75, 0.95) if i % 3 == 0 else (0.55, 0.75) if i % 3 == 1 else (0.9, 0.55)
        colors.append([int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val)])
    return colors


def _check_args(name, class_names, ignore_label, colors, evaluator_type, extra_metadata):
    """Validate everything that needs no file system; return (class_names, colors) as lists."""
    where = f"register_sem_seg_folder('{name}')"
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"{where}: class_names must be a non-empty list of names, got {class_names!r}")
    class_names = [str(c) for c in class_names]
    if len(set(class_names)) != len(class_names):
        dups = sorted({c for c in class_names if class_names.count(c) > 1})
        raise ValueError(f"{where}: class_names has duplicates {dups}")
    num = len(class_names)
    if not isinstance(ignore_label, int) or not (0 <= ignore_label <= 255) or ignore_label < num:
        raise ValueError(f"{where}: ignore_label must be an int in [{num}, 255] (not a class id), got {ignore_label!r}")
    if colors is None:
        colors = default_class_colors(num)
    else:
        colors = [[int(v) for v in c] for c in colors]
        if len(colors) != num or any(len(c) != 3 or min(c) < 0 or max(c) > 255 for c in colors):
            raise ValueError(f"{where}: colors must be {num} RGB triplets with values in 0..255, got {colors!r}")
    if not isinstance(evaluator_type, str):
        raise ValueError(f"{where}: evaluator_type must be a string, got {evaluator_type!r}")
    for key, value in extra_metadata.items():
        if key in _RESERVED_KEYS:
            raise ValueError(f"{where}: metadata key '{key}' is set from the function's own arguments; do not pass it")
        if key.endswith("_class_ids"):
            ids = list(value)
            if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num for i in ids):
                raise ValueError(f"{where}: {key} must hold class ids in [0, {num - 1}], got {ids!r}")
    return class_names, colors


def register_sem_seg_folder(
    name,
    image_root,
    label_root,
    class_names,
    *,
    image_ext=None,
    label_ext=".png",
    ignore_label=255,
    colors=None,
    evaluator_type="sem_seg",
    prepare=None,
    label_mapping=None,
    label_cache_dir=None,
    **extra_metadata,
):
    """Register ``name`` in ``DatasetCatalog`` / ``MetadataCatalog`` for a folder of images + label PNGs.

    ``label_mapping`` (:class:`~simformer.data.label_formats.LabelMapping`): the label files hold other
    values than train ids (non-contiguous ids, RGB palette colours, 0/255 masks); they are converted once,
    when the dataset is first loaded, into train-id PNGs in ``label_cache_dir`` (default
    ``<label_root>_trainids-<hash>``), which the dataset then reads (``sem_seg_root``); an unchanged source
    is not converted again. The mapping's ``num_classes`` must equal ``len(class_names)``.

    Metadata: ``stuff_classes``, ``stuff_colors`` (``colors`` or distinct defaults), ``ignore_label``,
    ``evaluator_type``, ``image_root``, ``sem_seg_root`` and every ``extra_metadata`` item (for example
    ``base_class_ids=[...]``, ``novel_class_ids=[...]``). ``prepare``: optional callable run by the
    loader before listing files (e.g. to generate the data). Files are read only when the loader runs
    (``DatasetCatalog.get(name)``), which raises on missing folders / images / labels.

    Registering the same name again with the same arguments does nothing; with different arguments (or
    a name registered elsewhere) it raises ``ValueError``. Returns the ``Metadata`` of ``name``.
    """
    class_names, colors = _check_args(name, class_names, ignore_label, colors, evaluator_type, extra_metadata)
    image_root = os.path.abspath(os.path.expanduser(image_root))
    label_root = os.path.abspath(os.path.expanduser(label_root))
    image_ext = None if image_ext is None else _norm_ext(image_ext, "image_ext")
    label_ext = _norm_ext(label_ext, "label_ext")
    spec_prepare = prepare  # what makes a re-registration equal (not the conversion closure below)
    if label_mapping is not None:
        if label_mapping.num_classes != len(class_names) or label_mapping.ignore_label != ignore_label:
            raise ValueError(f"register_sem_seg_folder('{name}'): the label mapping is for {label_mapping.num_classes} classes / ignore {label_mapping.ignore_label}, "
                             f"the dataset has {len(class_names)} classes / ignore {ignore_label}")  # fmt: skip
        source_root, source_ext = label_root, label_ext
        label_root = os.path.abspath(label_cache_dir) if label_cache_dir else default_cache_dir(source_root, label_mapping)
        label_ext = ".png"
        extra_metadata = dict(extra_metadata, label_source_root=source_root, label_mapping=label_mapping.fingerprint())
        user_prepare = prepare

        def prepare():
            if user_prepare is not None:
                user_prepare()
            convert_label_folder(source_root, label_mapping, label_root, source_ext, log=logger.info)
    metadata = dict(
        stuff_classes=class_names,
        stuff_colors=colors,
        ignore_label=ignore_label,
        evaluator_type=evaluator_type,
        image_root=image_root,
        sem_seg_root=label_root,
        **extra_metadata,
    )
    spec = dict(metadata, image_ext=image_ext, label_ext=label_ext, prepare=spec_prepare)

    if name in DatasetCatalog.list():
        old = _SPECS.get(name)
        if old is None:
            raise ValueError(f"register_sem_seg_folder: dataset '{name}' is already registered (not by this function)")
        if old != spec:
            diff = sorted(k for k in set(old) | set(spec) if old.get(k, "<unset>") != spec.get(k, "<unset>"))
            raise ValueError(f"register_sem_seg_folder: dataset '{name}' is already registered with different {diff}")
        return MetadataCatalog.get(name)
    if name in _SPECS and name in MetadataCatalog.list():
        MetadataCatalog.remove(name)  # stale metadata of ours: the dataset was removed from DatasetCatalog

    def load():
        if prepare is not None:
            prepare()
        try:
            return load_sem_seg_folder(image_root, label_root, image_ext, label_ext)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"dataset '{name}': {e}") from e

    DatasetCatalog.register(name, load)
    _SPECS[name] = spec
    meta = MetadataCatalog.get(name)
    meta.set(**metadata)
    return meta
