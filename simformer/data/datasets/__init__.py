"""Dataset registration: importing this package registers the built-in datasets.

- :mod:`.folder`: ``register_sem_seg_folder`` for any folder of images + label PNGs.
- :mod:`.synthetic`: the built-in synthetic dataset (``synthetic_train`` / ``synthetic_val``).
- :mod:`.synthetic_shared`: a second synthetic dataset whose classes share shapes and textures
  (``synthetic_shared_*``, weak-shot split ``synthetic_shared_ws_*``).
"""
from . import folder, synthetic  # noqa: F401
from . import builtin, weakshot  # noqa: F401
from . import synthetic_shared  # noqa: F401
from .coco_json import register_coco_weakshot  # noqa: F401
from .weakshot import register_real_weakshot, register_simulated_weakshot  # noqa: F401
from .folder import load_sem_seg_folder, register_sem_seg_folder  # noqa: F401
from .synthetic import (  # noqa: F401
    SYNTHETIC_CLASSES,
    SYNTHETIC_OBJECT_IDS,
    SYNTHETIC_STUFF_IDS,
    describe_synthetic,
    ensure_synthetic_dataset,
    register_synthetic,
)
