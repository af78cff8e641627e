"""SSA-Seg's semantic and spatial adaptive classifier (spec: /work/shared/specs/ssa.md), pure PyTorch.

* :class:`SSAClassifier` -- coarse mask -> SEPA + SPPA -> tau-scaled cosine logits, from pixel features
  (B, C, h, w) and fixed class prototypes (K, C) or per-image prototypes (B, K, C); ``losses()`` adds the
  GT-guided teacher and the online multi-domain distillation terms in training.
* :class:`SSATeacher` -- the training-only teacher (owned by the classifier; removed by ``drop_teacher``).
* :mod:`ssa_adapter.losses` -- the loss terms as pure tensor functions.

No detectron2 import here: the detectron2 glue is ``simformer.modeling.classifiers.ssa``.
"""
from .classifier import DEFAULT_LOSS_WEIGHTS, SSAClassifier, drop_teachers, inference_parameter_increase
from .teacher import SSATeacher

__all__ = ["SSAClassifier", "SSATeacher", "DEFAULT_LOSS_WEIGHTS", "inference_parameter_increase", "drop_teachers"]
