"""Cross-image pixel contrast: training-only projection head, class-wise memory, and the loss module
(spec related_methods §C, §D.3). The maths is in :mod:`.losses.pixel_contrast`.

:class:`PixelContrast` lives in SimFormer's criterion: it never runs at inference, its parameters and
memory are model state (trained by the optimizer, saved in checkpoints).
"""
from typing import Optional

import torch
import torch.distributed as dist
from detectron2.layers import get_norm
from torch import nn
from torch.nn import functional as F

from ssa_adapter.losses import downsample_labels

from .losses.pixel_contrast import group_ranks, pixel_contrast_loss, ring_buffer_slots, sample_anchors

__all__ = ["ProjectionHead", "PixelContrastMemory", "PixelContrast", "PROJECTIONS", "BASE_TEMPERATURE", "build_pixel_contrast"]

PROJECTIONS = ("convmlp", "linear")
BASE_TEMPERATURE = 0.07  # official base_temperature: loss_scale = temperature / 0.07 (spec §C.9 Q6)


class ProjectionHead(nn.Module):
    """(B, C, H, W) -> (B, D, H, W) unit-norm pixel embeddings (spec §C.2).

    ``"convmlp"``: 1x1 conv C->C, norm, ReLU, 1x1 conv C->D; ``"linear"``: one 1x1 conv C->D. ``norm`` is a
    detectron2 norm name ("", "BN", "GN", "SyncBN", ...).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, kind: str = "convmlp", norm: str = ""):
        super().__init__()
        if kind not in PROJECTIONS:
            raise ValueError(f"MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ must be one of {PROJECTIONS}, got {kind!r}")
        if kind == "convmlp":
            self.proj = nn.Sequential(
                nn.Conv2d(in_dim, in_dim, 1, bias=not norm),
                get_norm(norm, in_dim) or nn.Identity(),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_dim, out_dim, 1),
            )
        else:
            self.proj = nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=1)


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every process) over processes, rank order; identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool all_gather
    out = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(out, y.contiguous())
    return torch.cat(out).to(x.dtype)


class PixelContrastMemory(nn.Module):
    """Class-wise FIFO queues of unit-norm embeddings (spec §C.5, fixed as in §C.9 Q1, Q2, Q8).

    * pixel queue (K, T_p, D): up to ``pixels_per_image`` random pixels per (image, class) per update;
    * region queue (K, T_r, D): the renormalised mean embedding of each (image, class) per update.
    A size of 0 disables that queue. Each queue has a write pointer and a fill count per class; slots never
    written are not used. Updates are all-gathered, so every process holds the same memory (the buffers
    are then identical, and DDP's buffer broadcast changes nothing). All state is buffers: saved in
    checkpoints, restored on resume. The per-process batch must be the same on every process.
    """

    def __init__(self, num_classes: int, dim: int, pixel_size: int = 2000, region_size: int = 1000, pixels_per_image: int = 10, fp16: bool = True):
        super().__init__()
        if pixel_size < 0 or region_size < 0 or pixel_size + region_size == 0:
            raise ValueError(
                "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.PIXEL_SIZE / REGION_SIZE must be >= 0 and not both 0, "
                f"got {pixel_size}, {region_size}"
            )
        if pixel_size and pixels_per_image < 1:
            raise ValueError(f"MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.PIXELS_PER_IMAGE must be >= 1, got {pixels_per_image}")
        self.num_classes, self.dim = num_classes, dim
        self.pixels_per_image = pixels_per_image
        dtype = torch.float16 if fp16 else torch.float32
        for name, size in (("pixel", pixel_size), ("region", region_size)):
            self.register_buffer(f"{name}_queue", torch.zeros(num_classes, size, dim, dtype=dtype))
            self.register_buffer(f"{name}_ptr", torch.zeros(num_classes, dtype=torch.int64))
            self.register_buffer(f"{name}_filled", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def push(self, name: str, rows: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
        """Write rows (R, D) of classes ``labels`` (R,) where ``valid`` (R,) into queue ``name`` (this process only).

        Each class's valid rows go, in order, to ``(ptr + 0, 1, ...) mod T``; the pointer advances by their
        number. Invalid rows rewrite the first written slot with its own new value (or slot 0 with its old
        value), so the write has a fixed size and needs no host sync.
        """
        queue, ptr, filled = getattr(self, f"{name}_queue"), getattr(self, f"{name}_ptr"), getattr(self, f"{name}_filled")
        k, size, d = queue.shape
        if size == 0:
            return
        slot, keep, count = ring_buffer_slots(labels, valid, ptr, size)
        flat = queue.view(k * size, d)
        index = labels.clamp(0, k - 1) * size + slot
        values = rows.to(queue.dtype)
        ref = torch.argmax(keep.to(torch.int8))  # first kept row (0 when none)
        any_kept = keep.any()
        ref_index = torch.where(any_kept, index[ref], torch.zeros_like(index[ref]))
        ref_value = torch.where(any_kept, values[ref], flat[0])
        index = torch.where(keep, index, ref_index)
        values = torch.where(keep[:, None], values, ref_value)
        flat.index_put_((index,), values)
        ptr.copy_((ptr + count) % size)
        filled.copy_((filled + count).clamp(max=size))

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """embeddings (B, D, P) unit norm, labels (B, P) int64 (negative = not stored): gather over processes, push."""
        b, d, p = embeddings.shape
        k, device = self.num_classes, embeddings.device
        e = embeddings.detach().permute(0, 2, 1).reshape(b * p, d).float()
        y = labels.flatten()
        valid = y >= 0
        image = torch.arange(b, device=device).repeat_interleave(p)
        g = torch.where(valid, image * k + y.clamp(min=0), b * k)  # (image, class) group; b*k = not stored
        group_labels = torch.arange(k, device=device).repeat(b)  # (B*K,)
        if self.region_queue.shape[1]:
            sums = torch.zeros(b * k + 1, d, device=device).index_add_(0, g, e)[:-1]
            counts = torch.zeros(b * k + 1, dtype=torch.int64, device=device).scatter_add_(0, g, torch.ones_like(g))[:-1]
            means = F.normalize(sums, dim=1)
            self.push("region", _all_gather_cat(means), _all_gather_cat(group_labels), _all_gather_cat(counts > 0))
        if self.pixel_queue.shape[1]:
            v = self.pixels_per_image
            rank = group_ranks(g)
            chosen = valid & (rank < v)
            slots = torch.where(chosen, g * v + rank.clamp(max=v - 1), b * k * v)  # last row: discarded
            rows = torch.zeros(b * k * v + 1, d, device=device).index_put_((slots,), e)[:-1]
            row_valid = torch.zeros(b * k * v + 1, dtype=torch.bool, device=device).index_put_((slots,), chosen)[:-1]
            row_labels = group_labels.repeat_interleave(v)
            self.push("pixel", _all_gather_cat(rows), _all_gather_cat(row_labels), _all_gather_cat(row_valid))

    def contrast_set(self, max_entries: int = 0):
        """Memory as a contrast set: feats (M, D), labels (M,) int64, valid (M,) bool (filled slots).

        ``max_entries`` > 0: a uniformly random subset of that many entries, drawn among the filled ones.
        """
        feats, labels, valid = [], [], []
        for name in ("pixel", "region"):
            queue, filled = getattr(self, f"{name}_queue"), getattr(self, f"{name}_filled")
            k, size, _ = queue.shape
            feats.append(queue.flatten(0, 1))
            labels.append(torch.arange(k, device=queue.device).repeat_interleave(size))
            valid.append((torch.arange(size, device=queue.device)[None, :] < filled[:, None]).flatten())
        feats, labels, valid = torch.cat(feats), torch.cat(labels), torch.cat(valid)
        if 0 < max_entries < len(feats):
            keys = torch.rand(len(feats), device=feats.device).masked_fill(~valid, -1.0)
            pick = keys.topk(max_entries).indices
            feats, labels, valid = feats[pick], labels[pick], valid[pick]
        return feats, labels, valid


class PixelContrast(nn.Module):
    """Auxiliary pixel contrast loss on labelled pixels (spec §D.3).

    ``forward(features, labels, pred)`` -> scalar loss:
        features (B, C, H, W) pixel features (mask features), labels (B, H0, W0) int64 class ids of the
        pixels to contrast (-1 elsewhere: ignore, padding, novel), pred (B, H1, W1) int64 detached
        prediction for hard-anchor mining, or None. Labels and predictions are resized (nearest) to the
        embedding resolution. With a memory, anchors are contrasted against the memory only (as in the
        official code), and the current embeddings are enqueued after the loss. The loss is multiplied
        by 0 for the first ``warmup_iters`` training calls (counted in a buffer, so resume is exact).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        proj_dim: int = 256,
        proj: str = "convmlp",
        norm: str = "",
        pool: int = 1,
        temperature: float = 0.1,
        loss_scale: Optional[float] = None,
        max_samples: int = 1024,
        max_views: int = 100,
        min_pixels: Optional[int] = None,
        hard_anchors: bool = True,
        warmup_iters: int = 0,
        memory: Optional[PixelContrastMemory] = None,
        memory_candidates: int = 0,
    ):
        super().__init__()
        key = "MODEL.SIMFORMER.PIXEL_CONTRAST"
        if temperature <= 0:
            raise ValueError(f"{key}.TEMPERATURE must be > 0, got {temperature}")
        if max_samples < 1 or max_views < 1:
            raise ValueError(f"{key}.MAX_SAMPLES and MAX_VIEWS must be >= 1, got {max_samples}, {max_views}")
        if pool < 1:
            raise ValueError(f"{key}.PROJ_STRIDE must be a multiple of the mask-feature stride, got pooling {pool}")
        if memory is not None and (memory.num_classes != num_classes or memory.dim != proj_dim):
            raise ValueError(f"pixel contrast memory is ({memory.num_classes}, {memory.dim}), expected ({num_classes}, {proj_dim})")
        self.head = ProjectionHead(in_dim, proj_dim, proj, norm)
        self.num_classes = num_classes
        self.pool = pool
        self.temperature = float(temperature)
        self.loss_scale = self.temperature / BASE_TEMPERATURE if loss_scale is None else float(loss_scale)
        self.max_samples, self.max_views = max_samples, max_views
        self.min_pixels = max_views if min_pixels is None else min_pixels
        self.hard_anchors = hard_anchors
        self.warmup_iters = warmup_iters
        self.memory = memory
        self.memory_candidates = memory_candidates
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))

    @staticmethod
    def _resize(x: torch.Tensor, size) -> torch.Tensor:
        return downsample_labels(x, size)

    def forward(self, features: torch.Tensor, labels: torch.Tensor, pred: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.pool > 1:
            features = F.avg_pool2d(features, self.pool)
        emb = self.head(features)  # (B, D, h, w)
        b, d, h, w = emb.shape
        y = self._resize(labels, (h, w)).flatten(1)
        if self.hard_anchors and pred is not None:
            hard = self._resize(pred, (h, w)).flatten(1) != y
        else:
            hard = torch.zeros_like(y, dtype=torch.bool)
        flat = emb.flatten(2)  # (B, D, P)
        idx, anchor_labels = sample_anchors(y, hard, self.num_classes, self.max_samples, self.max_views, self.min_pixels)
        anchors = flat.permute(0, 2, 1).reshape(b * h * w, d)[idx]
        if self.memory is None:
            loss = pixel_contrast_loss(anchors, anchor_labels, temperature=self.temperature, loss_scale=self.loss_scale)
        else:
            feats, c_labels, c_valid = self.memory.contrast_set(self.memory_candidates)
            loss = pixel_contrast_loss(anchors, anchor_labels, feats, c_labels, c_valid, self.temperature, self.loss_scale)
        loss = loss + 0.0 * emb.sum()  # every head parameter stays in the graph (DDP), also without anchors
        active = (self.num_steps >= self.warmup_iters).to(loss.dtype)
        if self.training:
            if self.memory is not None:
                self.memory.enqueue(flat, y)
            self.num_steps += 1
        return loss * active


def build_pixel_contrast(cfg) -> PixelContrast:
    """The training-only pixel contrast module of ``MODEL.SIMFORMER.PIXEL_CONTRAST`` (head on the mask features)."""
    pc = cfg.MODEL.SIMFORMER.PIXEL_CONTRAST
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if pc.PROJ_STRIDE < 4 or pc.PROJ_STRIDE % 4:
        raise ValueError(f"MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ_STRIDE must be a multiple of 4 (the mask-feature stride), got {pc.PROJ_STRIDE}")
    memory = None
    if pc.MEMORY.ENABLED:
        m = pc.MEMORY
        memory = PixelContrastMemory(num_classes, pc.PROJ_DIM, m.PIXEL_SIZE, m.REGION_SIZE, m.PIXELS_PER_IMAGE, m.STORE_FP16)
    warmup = round(0.125 * cfg.SOLVER.MAX_ITER) if pc.WARMUP_ITERS < 0 else pc.WARMUP_ITERS
    return PixelContrast(
        cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        num_classes,
        proj_dim=pc.PROJ_DIM,
        proj=pc.PROJ,
        norm=cfg.MODEL.SEM_SEG_HEAD.NORM,
        pool=pc.PROJ_STRIDE // 4,
        temperature=pc.TEMPERATURE,
        loss_scale=None if pc.LOSS_SCALE < 0 else pc.LOSS_SCALE,
        max_samples=pc.MAX_SAMPLES,
        max_views=pc.MAX_VIEWS,
        min_pixels=pc.MIN_PIXELS_PER_CLASS,
        hard_anchors=pc.HARD_ANCHORS,
        warmup_iters=warmup,
        memory=memory,
        memory_candidates=pc.MEMORY.CANDIDATES if memory is not None else 0,
    )
