from .build import CLASSIFIER_REGISTRY, build_classifier
from .ccs import CCSClassifier
from .linear import LinearClassifier
from .ssa import SSAClassifier

__all__ = ["CLASSIFIER_REGISTRY", "build_classifier", "LinearClassifier", "SSAClassifier"]
