"""Any timm model as a detectron2 backbone (``MODEL.BACKBONE.NAME "TimmBackbone"``, keys ``MODEL.TIMM.*``).

``timm.create_model(MODEL.TIMM.NAME, features_only=True)`` gives the model's feature pyramid; its levels at
strides 4, 8, 16, 32 become ``res2`` ... ``res5`` (the names and strides our pixel decoders read), in
NCHW whatever the model's own layout (Swin's NHWC maps are permuted). Vision transformers with windows
(Swin) are built with ``dynamic_img_size=True`` so that any input whose sides are multiples of 32 works
(``size_divisibility`` 32). Needs ``pip install -e .[timm]``.

Weights: ``MODEL.TIMM.PRETRAINED_FILE`` (a timm / hub state dict ``.pth`` / ``.bin`` / ``.safetensors`` of
the classification model) is loaded by timm's own pretrained loader (its key filters, e.g. Swin's
relative-position tables, and the dropped classifier), never downloaded; a checkpoint converted by
``simformer-convert-weights --timm-model NAME`` goes into ``MODEL.WEIGHTS`` instead.
``MODEL.TIMM.FREEZE_AT`` (0 = train all, 1 = the stem, k >= 2 = the stem and the stages up to res<k>),
``MODEL.TIMM.NORM`` ("" = the model's own, "FrozenBN" / "SyncBN" / "BN" for models with BatchNorm) and
``MODEL.TIMM.DROP_PATH_RATE`` (stochastic depth) are exposed.
"""
import logging
import re
from typing import Dict

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["TimmBackbone", "build_timm_features"]

logger = logging.getLogger(__name__)

_LEVELS = {4: "res2", 8: "res3", 16: "res4", 32: "res5"}


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError("MODEL.BACKBONE.NAME 'TimmBackbone' needs timm: pip install -e '.[timm]' (or pip install timm)") from e
    return timm


def build_timm_features(name: str, pretrained_file: str = "", drop_path_rate: float = 0.0, in_chans: int = 3) -> nn.Module:
    """``timm.create_model(name, features_only=True)``; with ``pretrained_file`` timm loads that local file
    through its pretrained path (``pretrained_cfg_overlay=dict(file=...)``)."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"MODEL.TIMM.NAME {name!r} is not a timm model (similar: {close})")
    kwargs = dict(features_only=True, in_chans=in_chans)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file:
        import os

        if not os.path.isfile(pretrained_file):
            raise FileNotFoundError(f"MODEL.TIMM.PRETRAINED_FILE {pretrained_file!r} does not exist (timm cannot download weights here: save them to a local file)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file))
    try:  # window / patch transformers: any input size (multiples of 32), not only the pre-training size
        body = timm.create_model(name, dynamic_img_size=True, strict_img_size=False, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        body = timm.create_model(name, **kwargs)
    if pretrained_file:
        _check_pretrained_coverage(body, pretrained_file, name)
    return body


def _classification_key(feature_key: str) -> str:
    """``features_only`` key -> the classification model's key (``stages_0.x`` -> ``stages.0.x``)."""
    return re.sub(r"^([A-Za-z_]+?)_(\d+)\.", r"\1.\2.", feature_key)


def _check_pretrained_coverage(body: nn.Module, path: str, name: str, min_share: float = 0.5) -> None:
    """timm's pretrained loader is not strict (unknown keys are only logged): refuse a file that holds fewer
    than ``min_share`` of the backbone's parameters, i.e. the weights of another model."""
    from timm.models import load_state_dict

    keys = set(load_state_dict(path).keys())
    wanted = [k for k, _ in body.named_parameters()]
    found = [k for k in wanted if _classification_key(k) in keys or k in keys]
    if len(found) < min_share * len(wanted):
        missing = [_classification_key(k) for k in wanted if k not in found][:4]
        raise ValueError(f"MODEL.TIMM.PRETRAINED_FILE {path!r}: only {len(found)} of the {len(wanted)} parameters of timm model {name!r} are in it (e.g. missing {missing}); is it {name}'s state dict?")


def _convert_norm(module: nn.Module, norm: str) -> nn.Module:
    if norm in ("", "BN"):
        return module
    if norm == "FrozenBN":
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    if norm == "SyncBN":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    raise ValueError(f"MODEL.TIMM.NORM must be '', 'BN', 'FrozenBN' or 'SyncBN', got {norm!r}")


@BACKBONE_REGISTRY.register()
class TimmBackbone(Backbone):
    """images (B, 3, H, W), H and W multiples of 32 -> ``{"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5,
    H/32, W/32)}`` (the levels in ``out_features``)."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        t = cfg.MODEL.TIMM
        self.body = build_timm_features(t.NAME, t.PRETRAINED_FILE, t.DROP_PATH_RATE, input_shape.channels or 3)
        info = self.body.feature_info
        self.nhwc = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self._index: Dict[str, int] = {}
        self._out_feature_strides, self._out_feature_channels = {}, {}
        for i, (reduction, channels) in enumerate(zip(info.reduction(), info.channels())):
            level = _LEVELS.get(int(reduction))
            if level is not None and level not in self._index:
                self._index[level] = i
                self._out_feature_strides[level] = int(reduction)
                self._out_feature_channels[level] = int(channels)
        out_features = list(t.OUT_FEATURES)
        missing = [f for f in out_features if f not in self._index]
        if missing:
            raise ValueError(f"MODEL.TIMM.OUT_FEATURES {missing}: {t.NAME} has feature maps at strides {info.reduction()}, i.e. {sorted(self._index)}")
        self._out_features = out_features
        self.body = _convert_norm(self.body, t.NORM)
        self._freeze(t.FREEZE_AT, info.module_name())

    def _freeze(self, freeze_at: int, module_names):
        """Freeze the stem (modules before the first feature level's) and the stages up to res<freeze_at>."""
        if freeze_at <= 0:
            return
        stop = None  # freeze children until (and including) the module that ends level res<freeze_at>
        if freeze_at >= 2:
            level = f"res{freeze_at}"
            if level not in self._index:
                raise ValueError(f"MODEL.TIMM.FREEZE_AT {freeze_at}: the model has no {level}")
            stop = module_names[self._index[level]].replace(".", "_")
        first = module_names[min(self._index.values())].replace(".", "_")
        for name, child in self.body.named_children():
            if stop is None and name == first:
                break
            for p in child.parameters():
                p.requires_grad_(False)
            setattr(self.body, name, FrozenBatchNorm2d.convert_frozen_batchnorm(child))
            if name == stop:
                break

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"TimmBackbone takes (B, C, H, W) images, got shape {tuple(x.shape)}")
        feats = self.body(x)
        out = {}
        for name in self._out_features:
            f = feats[self._index[name]]
            out[name] = f.permute(0, 3, 1, 2).contiguous() if self.nhwc else f
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]) for n in self._out_features}
