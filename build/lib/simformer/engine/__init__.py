"""Training engine: trainer, optimizer / schedule builders, prediction overlays."""
from .optimizer import build_optimizer, build_poly_lr_scheduler, optimizer_param_groups
from .trainer import Trainer
from .visualize import overlay_panel, write_overlays

__all__ = ["Trainer", "build_optimizer", "build_poly_lr_scheduler", "optimizer_param_groups", "overlay_panel", "write_overlays"]
