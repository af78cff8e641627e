"""Backbones beyond detectron2's ResNet; importing registers them in ``BACKBONE_REGISTRY``."""
from .timm_backbone import TimmBackbone

__all__ = ["TimmBackbone"]
