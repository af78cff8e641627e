from .build import CLASSIFIER_REGISTRY, build_classifier
from .linear import LinearClassifier

__all__ = ["CLASSIFIER_REGISTRY", "build_classifier", "LinearClassifier"]
