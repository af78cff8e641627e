from .build import MAPPER_REGISTRY, build_mapper
from .sem_seg_mapper import SemSegDatasetMapper, SemSegTestMapper, label_map_to_targets, read_label_map
from .weakshot_mapper import WeakShotDatasetMapper  # noqa: F401  (registers in MAPPER_REGISTRY)
from .pair_mapper import PairDatasetMapper  # noqa: F401  (registers in MAPPER_REGISTRY)

__all__ = ["MAPPER_REGISTRY", "build_mapper", "SemSegDatasetMapper", "SemSegTestMapper", "label_map_to_targets", "read_label_map"]
