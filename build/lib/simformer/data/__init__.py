"""Datasets (registered in detectron2's catalogs on import)."""
from . import datasets  # noqa: F401
