"""Set criterion of the mask-classification model: matching, named loss terms, deep supervision.

Loss terms (unweighted; the model multiplies by ``weight_dict``):
  loss_ce    -- CE over K+1 classes of every query (matched: its target's class, else no-object),
  loss_focal -- sigmoid focal loss of matched masks (targets with a mask only),
  loss_dice  -- dice loss of the same pairs.
Mask losses are summed over pairs and divided by the number of has-mask targets in the global batch.
Intermediate decoder layers (``aux_outputs``) add the same terms with suffix ``_<i>``.

Where the mask losses are evaluated (``num_points``):
  0   -- every pixel of the target resolution (predictions upsampled bilinearly): the exact objective;
  P>0 -- P points per matched mask (:mod:`.losses.point_sampling`): ``importance_sample_ratio`` of them
         the most uncertain of ``oversample_ratio * P`` uniform candidates, the rest uniform. Memory per
         layer drops from M*H*W to M*P values. A different objective unless ``importance_sample_ratio``
         is 0 (then an unbiased estimate of the full-resolution losses); spec §11 flags it as a deviation.

Weak-shot terms (:mod:`.loss_terms`) are composed in through ``terms``: a term with ``per_layer`` True is
called on every layer with its matches (``term(outputs, targets, indices)``, suffix ``_<i>`` like the rest),
the others once on the final outputs (``term(outputs, targets)``), in the order given, after every layer's
terms. :func:`~.build_criterion.build_criterion` assembles the criterion and its weights from the config.

Numerics: the whole criterion (matcher included) runs in fp32 with autocast off, whatever the caller's
autocast state. Host-device syncs: one copy of the matching costs of all layers and one of the targets'
``has_mask`` flags per call; selections of matched pairs are done on the host.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .losses.classification import weighted_cross_entropy
from .losses.mask import dice_loss, sigmoid_focal_loss
from .losses.point_sampling import point_sample, uncertain_point_coords

__all__ = ["SetCriterion", "host_has_mask", "host_matched_pairs", "point_sampling_kwargs"]

_TERM_NAMES = {"labels": ("loss_ce",), "masks": ("loss_focal", "loss_dice")}
HOST_HAS_MASK = "has_mask_host"  # target key set by SetCriterion.forward: has_mask (T,) bool on the CPU
# target key set by SetCriterion.forward: the masks of every image's has-mask targets, concatenated once in image
# order (M, H, W) and shared by all the decoder layers' mask losses
MASKS_WITH_MASK = "masks_with_mask_all_images"


def _global_mean_count(count: torch.Tensor) -> torch.Tensor:
    """Average a count over processes (so every process normalises by the same number), at least 1."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1)


def point_sampling_kwargs(cfg) -> Dict:
    """The point-sampling keyword arguments of :class:`SetCriterion` from ``MODEL.MASK_FORMER``."""
    mf = cfg.MODEL.MASK_FORMER
    return {"num_points": mf.TRAIN_NUM_POINTS, "oversample_ratio": mf.OVERSAMPLE_RATIO, "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO}


def _to_float(x):
    """Floating tensors in nested dicts / lists -> float32 (others unchanged)."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    return x


def _device_of(outputs) -> torch.device:
    return outputs["pred_masks"].device


def host_has_mask(targets: List[Dict]) -> List[torch.Tensor]:
    """Per image, ``has_mask`` (T,) as a CPU bool tensor (all True when absent), with one device-to-host copy."""
    flags = [t.get("has_mask") for t in targets]
    sizes = [len(t["labels"]) for t in targets]
    device_flags = [f for f in flags if f is not None]
    copied = iter(torch.cat(device_flags).cpu().split([len(f) for f in device_flags])) if device_flags else iter(())
    return [next(copied) if f is not None else torch.ones(n, dtype=torch.bool) for f, n in zip(flags, sizes)]


def host_matched_pairs(targets: List[Dict], indices, with_mask: bool = True):
    """Per image, the matched (query, target) index arrays (NumPy, on the host) whose target has
    (``with_mask``) / lacks a mask. The matcher's indices live on the host, so selecting here costs no
    device sync."""
    pairs = []
    for t, (i, j) in zip(targets, indices):
        flags = (t[HOST_HAS_MASK] if HOST_HAS_MASK in t else host_has_mask([t])[0]).numpy()
        i, j = i.cpu().numpy(), j.cpu().numpy()
        keep = flags[j] if with_mask else ~flags[j]
        pairs.append((i[keep], j[keep]))
    return pairs


def masks_with_mask(targets: List[Dict], flags: List[torch.Tensor]) -> torch.Tensor:
    """(M, H, W): the masks of the targets with ``flags`` (per image (T,) bool on the CPU) set, images in order."""
    parts = [t["masks"] if bool(f.all()) else t["masks"][f.to(t["masks"].device)] for t, f in zip(targets, flags)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        eos_coef: float,
        losses=("labels", "masks"),
        num_points: int = 0,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        terms: Sequence[nn.Module] = (),
    ):
        super().__init__()
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"SetCriterion: loss terms with the same name {names}")
        self.terms = nn.ModuleDict({t.name: t for t in terms})
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        unknown = set(self.losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown loss terms {sorted(unknown)}; expected 'labels', 'masks'")
        if num_points < 0:
            raise ValueError(f"SetCriterion: num_points must be >= 0 (0 = full resolution), got {num_points} (MODEL.MASK_FORMER.TRAIN_NUM_POINTS)")
        if num_points > 0 and oversample_ratio < 1:
            raise ValueError(f"MODEL.MASK_FORMER.OVERSAMPLE_RATIO must be >= 1, got {oversample_ratio}")
        if num_points > 0 and not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(f"MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO must be in [0, 1], got {importance_sample_ratio}")
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def __call__(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        """Runs :meth:`forward` (also a subclass's) in fp32 with autocast off: the matching costs and the
        losses are numerically sensitive, so mixed-precision training keeps them in full precision."""
        with torch.autocast(device_type=_device_of(outputs).type, enabled=False):
            return super().__call__(_to_float(outputs), targets)

    def loss_labels(self, outputs, targets, indices, num_masks):
        logits = outputs["pred_logits"].float()
        b, q, _ = logits.shape
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, src_idx, tgt_labels = self._matched(targets, indices, "labels", logits.device)
        target_classes[batch_idx, src_idx] = tgt_labels
        return {"loss_ce": weighted_cross_entropy(logits, target_classes, self.empty_weight.to(logits.dtype))}

    def _matched_with_mask(self, targets, indices, device):
        """Matched pairs whose target has a mask, selected on the host and ordered by target: (batch, query)
        index tensors (M,) on ``device`` and the (M, H, W) target masks. When every has-mask target is
        matched (always with at least as many queries as targets) the masks are the concatenation made once
        per forward (``MASKS_WITH_MASK``), not a copy per decoder layer."""
        flags = [t[HOST_HAS_MASK] if HOST_HAS_MASK in t else host_has_mask([t])[0] for t in targets]
        batch_idx, src_idx, rows, offset = [], [], [], 0
        for b, ((i, j), f) in enumerate(zip(host_matched_pairs(targets, indices, with_mask=True), flags)):
            order = np.argsort(j, kind="stable")
            f = f.numpy()
            rows.append(offset + (np.cumsum(f) - 1)[j[order]])  # row of each target among the has-mask ones
            offset += int(f.sum())
            batch_idx.append(np.full(len(i), b, dtype=np.int64))
            src_idx.append(i[order].astype(np.int64))
        rows = np.concatenate(rows).astype(np.int64)
        masks = targets[0][MASKS_WITH_MASK] if MASKS_WITH_MASK in targets[0] else masks_with_mask(targets, flags)
        if len(rows) != masks.shape[0] or not (rows == np.arange(len(rows))).all():
            masks = masks[torch.from_numpy(rows).to(masks.device)]
        to = lambda a: torch.from_numpy(np.concatenate(a)).to(device)  # noqa: E731
        return to(batch_idx), to(src_idx), masks.to(device)

    def loss_masks(self, outputs, targets, indices, num_masks):
        pred_masks = outputs["pred_masks"]
        batch_idx, src_idx, tgt = self._matched_with_mask(targets, indices, pred_masks.device)
        if batch_idx.numel() == 0:  # host-side size: no sync
            zero = pred_masks.sum() * 0.0
            return {"loss_focal": zero, "loss_dice": zero}
        src = pred_masks[batch_idx, src_idx].float()  # (M, h, w)
        tgt = tgt.float()  # (M, H, W)
        if self.num_points > 0:
            coords = uncertain_point_coords(src.detach(), self.num_points, self.oversample_ratio, self.importance_sample_ratio)  # (M, P, 2)
            src = point_sample(src, coords)  # (M, P)
            tgt = point_sample(tgt, coords, mode="nearest")
        else:
            src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            src, tgt = src.flatten(1), tgt.flatten(1)
        return {
            "loss_focal": sigmoid_focal_loss(src, tgt, binary_targets=True).sum() / num_masks,  # 0/1 masks
            "loss_dice": dice_loss(src, tgt).sum() / num_masks,
        }

    @staticmethod
    def _matched(targets, indices, field, device):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        if field is None:
            return batch_idx, src_idx, torch.cat([tgt for _, tgt in indices]).to(device)
        values = torch.cat([t[field][j.to(t[field].device)] for t, (_, j) in zip(targets, indices)]).to(device)
        return batch_idx, src_idx, values

    def _layer_losses(self, outputs, targets, num_masks, indices=None):
        """Loss terms of one decoder layer; ``indices`` = its matches (computed here when None)."""
        if indices is None:
            indices = self.matcher(outputs, targets)
        losses = {}
        for name in self.losses:
            losses.update(getattr(self, f"loss_{name}")(outputs, targets, indices, num_masks))
        for term in self.terms.values():
            if term.per_layer:
                losses.update(term(outputs, targets, indices))
        return losses

    def match_all_layers(self, layers: List[Dict], targets: List[Dict]):
        """Matches of every layer, with one device-to-host copy when the matcher supports it."""
        if hasattr(self.matcher, "match_layers"):
            return self.matcher.match_layers(layers, targets)
        return [self.matcher(o, targets) for o in layers]

    def forward(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        """outputs: pred_logits (B, Q, K+1), pred_masks (B, Q, h, w), optional aux_outputs;
        targets[b]: labels (T,), masks (T, H, W) at the padded input size, optional has_mask (T,).
        The targets are passed on (shallow copies) with ``has_mask_host``, their flags on the CPU, and
        ``MASKS_WITH_MASK``, the has-mask target masks of all images concatenated once."""
        device = outputs["pred_masks"].device
        flags = host_has_mask(targets)
        shared = masks_with_mask(targets, flags)
        targets = [dict(t, **{HOST_HAS_MASK: f, MASKS_WITH_MASK: shared}) for t, f in zip(targets, flags)]
        num_masks = float(sum(f.numpy().sum() for f in flags))  # host values
        num_masks = _global_mean_count(torch.as_tensor(num_masks, device=device))
        aux = list(outputs.get("aux_outputs", []))
        all_indices = self.match_all_layers([outputs] + aux, targets)
        losses = self._layer_losses(outputs, targets, num_masks, indices=all_indices[0])
        for i, (layer, indices) in enumerate(zip(aux, all_indices[1:])):
            losses.update({f"{k}_{i}": v for k, v in self._layer_losses(layer, targets, num_masks, indices=indices).items()})
        for term in self.terms.values():
            if not term.per_layer:
                losses.update(term(outputs, targets))
        return losses

    def loss_names(self, num_layers: int) -> List[str]:
        """Every loss name ``forward`` returns for a decoder with ``num_layers`` supervised layers (the last
        one plus ``num_layers - 1`` intermediate ones): the per-layer names with suffixes, then the rest."""
        layer = [n for name in self.losses for n in _TERM_NAMES[name]] + [n for t in self.terms.values() if t.per_layer for n in t.loss_names]
        names = layer + [f"{n}_{i}" for i in range(num_layers - 1) for n in layer]
        return names + [n for t in self.terms.values() if not t.per_layer for n in t.loss_names]
