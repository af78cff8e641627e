"""Semantic inference of the mask-classification model, as pure tensor functions."""
import torch
from torch.nn import functional as F

__all__ = ["semantic_inference", "upsampled_semantic_inference", "postprocess_sem_seg"]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Per-class score map S_c(x) = sum_q softmax(z_q)_c * sigmoid(m_q(x)) for the K real classes.

    Args:
        mask_cls: (Q, K+1) or (B, Q, K+1) class logits (last column = no object).
        mask_pred: (Q, H, W) or (B, Q, H, W) mask logits.
        inplace: apply the sigmoid in place when ``mask_pred`` is float32 (a caller-owned temporary, e.g.
            freshly upsampled masks): saves one (Q, H, W) copy at inference.
    Returns:
        (K, H, W) or (B, K, H, W) scores.
    """
    prob = F.softmax(mask_cls.float(), dim=-1)[..., :-1]
    masks = mask_pred.sigmoid_() if inplace and mask_pred.dtype == torch.float32 else mask_pred.float().sigmoid()
    if mask_cls.dim() == 2:
        return torch.einsum("qc,qhw->chw", prob, masks)
    return torch.einsum("bqc,bqhw->bchw", prob, masks)


def upsampled_semantic_inference(mask_cls: torch.Tensor, mask_logits: torch.Tensor, size, band_elements: int = 1 << 18) -> torch.Tensor:
    """:func:`semantic_inference` of the mask logits bilinearly upsampled to ``size`` (what inference needs),
    without holding every upsampled mask: the output is made in bands of rows; for each band the masks
    are resampled at exactly the points ``F.interpolate(..., mode="bilinear", align_corners=False)`` would
    use (``grid_sample`` with border clamping), passed through the sigmoid and summed over queries in one
    matrix product written straight into the band's columns of the output (``out=``; with gradients
    needed, an assignment instead). Peak memory K*H*W plus one band of ``band_elements`` mask values (1 MiB
    by default) instead of (K + Q)*H*W, and one pass over the output. Equal to upsample-then-sum up to float
    rounding.

    Args:
        mask_cls: (B, Q, K+1) class logits; mask_logits: (B, Q, h, w) mask logits; size: (H, W).
    Returns:
        (B, K, H, W) float32 scores.
    """
    prob_t = F.softmax(mask_cls.float(), dim=-1)[..., :-1].transpose(1, 2)  # (B, K, Q)
    masks = mask_logits.float()
    b, k, q = prob_t.shape
    h, w = masks.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    scores = prob_t.new_empty((b, k, out_h * out_w))
    needs_grad = torch.is_grad_enabled() and (mask_cls.requires_grad or mask_logits.requires_grad)
    device = masks.device
    # source coordinates of interpolate(align_corners=False), then grid_sample's normalisation of them
    xs = ((torch.arange(out_w, device=device, dtype=torch.float32) + 0.5) * (w / out_w) - 0.5).clamp(min=0)
    ys = ((torch.arange(out_h, device=device, dtype=torch.float32) + 0.5) * (h / out_h) - 0.5).clamp(min=0)
    gx, gy = (2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1
    rows = max(1, min(out_h, band_elements // max(1, q * out_w)))
    for r0 in range(0, out_h, rows):
        band_y = gy[r0 : r0 + rows]
        grid = torch.stack((gx.expand(len(band_y), out_w), band_y[:, None].expand(len(band_y), out_w)), dim=-1)
        up = F.grid_sample(masks, grid[None].expand(b, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False).sigmoid_()
        columns = slice(r0 * out_w, (r0 + len(band_y)) * out_w)
        if needs_grad:
            scores[:, :, columns] = torch.bmm(prob_t, up.flatten(2))
        else:  # no (B, K, rows * W) temporary
            torch.bmm(prob_t, up.flatten(2), out=scores[:, :, columns])
    return scores.view(b, k, out_h, out_w)


def postprocess_sem_seg(result: torch.Tensor, image_size, output_height: int, output_width: int) -> torch.Tensor:
    """Crop the padding away from a (C, H_pad, W_pad) map and resize it bilinearly to the original size."""
    result = result[:, : image_size[0], : image_size[1]]
    if (output_height, output_width) != tuple(result.shape[-2:]):
        result = F.interpolate(result[None], size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
    return result
