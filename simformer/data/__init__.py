"""Data: datasets (registered in detectron2's catalogs on import), mappers, loaders and the one image
reader (:mod:`.image_io`, which alone also works without detectron2)."""
from .. import HAS_DETECTRON2

if HAS_DETECTRON2:
    from . import datasets  # noqa: F401
