from .build import MAPPER_REGISTRY, build_mapper
from .sem_seg_mapper import SemSegDatasetMapper, SemSegTestMapper, label_map_to_targets, read_label_map

__all__ = ["MAPPER_REGISTRY", "build_mapper", "SemSegDatasetMapper", "SemSegTestMapper", "label_map_to_targets", "read_label_map"]
