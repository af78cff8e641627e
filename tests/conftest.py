"""Shared test set-up: simformer is imported first so detectron2's compatibility patches are in place."""
import simformer  # noqa: F401
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog


@pytest.fixture
def name():
    """A fresh dataset name, unregistered from both catalogs afterwards."""
    n = f"test_ds_{uuid.uuid4().hex[:8]}"
    yield n
    for catalog in (DatasetCatalog, MetadataCatalog):
        if n in catalog.list():
            catalog.remove(n)
