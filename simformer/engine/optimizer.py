"""Optimizer and LR schedule builders (pure functions of the cfg and the model)."""
import itertools
from typing import Any, Dict, List

import torch
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from detectron2.utils.env import TORCH_VERSION
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

__all__ = ["optimizer_param_groups", "merge_param_groups", "build_optimizer", "build_poly_lr_scheduler"]

_NORM_TYPES = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm, torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm, torch.nn.LocalResponseNorm,
)


# parameter names (the last component) that are position embeddings: weight decay WEIGHT_DECAY_EMBED
POSITION_EMBEDDING_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed")


def optimizer_param_groups(model, base_lr, weight_decay, weight_decay_norm, weight_decay_embed, backbone_multiplier) -> List[Dict[str, Any]]:
    """One group per parameter: LR x ``backbone_multiplier`` inside modules named "*backbone*";
    weight decay ``weight_decay_norm`` for normalisation layers (incl. detectron2's FrozenBatchNorm,
    which has no trainable parameters and timm's LayerNorm2d, a LayerNorm subclass) and
    ``weight_decay_embed`` for nn.Embedding and position embeddings (parameters named as in
    :data:`POSITION_EMBEDDING_NAMES`: Swin's relative-position tables, ViT / Swin absolute embeddings),
    as Mask2Former's Swin recipe."""
    from detectron2.layers import FrozenBatchNorm2d

    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            lr, wd = base_lr, weight_decay
            if "backbone" in module_name:
                lr = lr * backbone_multiplier
            if isinstance(module, _NORM_TYPES + (FrozenBatchNorm2d,)):
                wd = weight_decay_norm
            elif isinstance(module, torch.nn.Embedding) or name in POSITION_EMBEDDING_NAMES:
                wd = weight_decay_embed
            groups.append({"params": [value], "lr": lr, "weight_decay": wd, "name": f"{module_name}.{name}"})
    return groups


def merge_param_groups(groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge groups with identical hyper-parameters (few groups let the optimizer's multi-tensor
    kernels batch the update; one group per parameter makes the step several times slower)."""
    merged: Dict[tuple, Dict[str, Any]] = {}
    for g in groups:
        key = tuple(sorted((k, v) for k, v in g.items() if k not in ("params", "name")))
        if key not in merged:
            merged[key] = {**{k: v for k, v in g.items() if k not in ("params", "name")}, "params": []}
        merged[key]["params"].extend(g["params"])
    return list(merged.values())


def _with_full_model_clipping(optim_cls, clip_norm):
    """Subclass ``optim_cls`` so that ``step`` first clips the L2 norm of all gradients together."""

    class FullModelGradientClippingOptimizer(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelClipped{optim_cls.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg, model) -> torch.optim.Optimizer:
    solver = cfg.SOLVER
    groups = optimizer_param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM, solver.WEIGHT_DECAY_EMBED, solver.BACKBONE_MULTIPLIER)
    groups = merge_param_groups(groups)
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-8}
        # the fused kernel (CPU and CUDA since torch 2.4) is several times faster than the per-tensor loop
        if TORCH_VERSION >= (2, 4):
            kwargs["fused"] = True
    elif name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r}: expected 'ADAMW' or 'SGD'")
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optim_cls = _with_full_model_clipping(optim_cls, clip.CLIP_VALUE)
    optimizer = optim_cls(groups, lr=solver.BASE_LR, **kwargs)
    if clip.ENABLED and clip.CLIP_TYPE != "full_model":
        from detectron2.solver.build import maybe_add_gradient_clipping

        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer


def build_poly_lr_scheduler(cfg, optimizer):
    """lr(it) = base * (1 - it / MAX_ITER) ** POLY_LR_POWER, with linear/constant warmup over WARMUP_ITERS."""
    solver = cfg.SOLVER
    sched = PolynomialDecayParamScheduler(1.0, solver.POLY_LR_POWER)
    if solver.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(sched, solver.WARMUP_FACTOR, min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0), solver.WARMUP_METHOD)
    return LRMultiplier(optimizer, multiplier=sched, max_iter=solver.MAX_ITER)
