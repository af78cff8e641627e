"""MAPPER_REGISTRY: training dataset mappers, chosen by ``INPUT.DATASET_MAPPER_NAME``."""
from detectron2.utils.registry import Registry

MAPPER_REGISTRY = Registry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers: ``cls(cfg, is_train)`` through ``from_config``; calling one maps a dataset dict to the
model's input dict.
"""


def build_mapper(cfg, is_train: bool = True):
    name = cfg.INPUT.DATASET_MAPPER_NAME
    try:
        mapper_cls = MAPPER_REGISTRY.get(name)
    except KeyError:
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not registered; available: {sorted(k for k, _ in MAPPER_REGISTRY)}") from None
    return mapper_cls(cfg, is_train)
