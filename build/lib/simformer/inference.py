"""Semantic inference of the mask-classification model, as pure tensor functions."""
import torch
from torch.nn import functional as F

__all__ = ["semantic_inference", "postprocess_sem_seg"]


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


def postprocess_sem_seg(result: torch.Tensor, image_size, output_height: int, output_width: int) -> torch.Tensor:
    """Crop the padding away from a (C, H_pad, W_pad) map and resize it bilinearly to the original size."""
    result = result[:, : image_size[0], : image_size[1]]
    if (output_height, output_width) != tuple(result.shape[-2:]):
        result = F.interpolate(result[None], size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
    return result
