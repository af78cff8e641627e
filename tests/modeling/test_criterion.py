import torch

from simformer.modeling.criterion import SetCriterion
from simformer.modeling.matcher import HungarianMatcher


def _setup(num_classes=3, q=4, size=8):
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, q, num_classes + 1, generator=g, requires_grad=True),
        "pred_masks": torch.randn(2, q, size // 2, size // 2, generator=g, requires_grad=True),
    }
    masks0 = torch.zeros(2, size, size)
    masks0[0, :4] = 1
    masks0[1, 4:] = 1
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": masks0},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, size, size)},
    ]
    return outputs, targets


def test_loss_terms_and_deep_supervision_keys():
    outputs, targets = _setup()
    outputs["aux_outputs"] = [{"pred_logits": outputs["pred_logits"] * 1.0, "pred_masks": outputs["pred_masks"] * 1.0}]
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_focal", "loss_dice", "loss_ce_0", "loss_focal_0", "loss_dice_0"}
    for k in ("loss_ce", "loss_focal", "loss_dice"):
        assert torch.allclose(losses[k], losses[k + "_0"])


def test_mask_loss_normalised_by_number_of_masks():
    outputs, targets = _setup()
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    indices = criterion.matcher(outputs, targets)
    one = criterion.loss_masks(outputs, targets, indices, torch.tensor(1.0))
    three = criterion.loss_masks(outputs, targets, indices, torch.tensor(3.0))
    assert torch.allclose(one["loss_dice"], three["loss_dice"] * 3)


def test_targets_without_mask_get_no_mask_loss():
    outputs, targets = _setup()
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    for t in targets:
        t["has_mask"] = torch.zeros(len(t["labels"]), dtype=torch.bool)
    losses = criterion(outputs, targets)
    assert losses["loss_focal"].item() == 0 and losses["loss_dice"].item() == 0
    losses["loss_ce"].backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0


def test_losses_decrease_when_optimised():
    outputs, targets = _setup()
    params = [outputs["pred_logits"], outputs["pred_masks"]]
    opt = torch.optim.Adam(params, lr=0.1)
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    first = None
    for _ in range(60):
        losses = criterion(outputs, targets)
        total = losses["loss_ce"] + 20 * losses["loss_focal"] + losses["loss_dice"]
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.2 * first


def _reference_mask_losses(outputs, targets, indices, num_masks):
    """The per-pair mask losses summed in the matcher's own order, each target mask indexed on its own."""
    from torch.nn import functional as F

    from simformer.modeling.losses.mask import dice_loss, sigmoid_focal_loss

    focal = dice = 0.0
    for b, (src, tgt) in enumerate(indices):
        has = targets[b].get("has_mask", torch.ones(len(targets[b]["labels"]), dtype=torch.bool))
        for i, j in zip(src.tolist(), tgt.tolist()):
            if not has[j]:
                continue
            t = targets[b]["masks"][j]
            s = F.interpolate(outputs["pred_masks"][b, i][None, None], size=t.shape, mode="bilinear", align_corners=False)
            focal = focal + sigmoid_focal_loss(s.flatten(1), t.flatten()[None]).sum()
            dice = dice + dice_loss(s.flatten(1), t.flatten()[None]).sum()
    return focal / num_masks, dice / num_masks


def test_mask_losses_equal_per_pair_reference_with_shared_target_masks():
    """The mask losses pair queries with the targets in target order and read the target masks from one
    concatenation shared by every layer: same values as indexing each pair's mask, with or without
    targets lacking a mask; the shared tensor is used as is when every has-mask target is matched."""
    outputs, targets = _setup()
    outputs["aux_outputs"] = [{"pred_logits": outputs["pred_logits"] * 0.5, "pred_masks": outputs["pred_masks"].flip(1)}]
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    for has_mask in (None, [torch.tensor([True, False]), torch.tensor([True])]):
        if has_mask is not None:
            for t, h in zip(targets, has_mask):
                t["has_mask"] = h
        losses = criterion(outputs, targets)
        for layer, suffix in ((outputs, ""), (outputs["aux_outputs"][0], "_0")):
            indices = criterion.matcher(layer, targets)
            focal, dice = _reference_mask_losses(layer, targets, indices, 2.0 if has_mask is not None else 3.0)
            assert torch.allclose(losses["loss_focal" + suffix], focal, atol=1e-6)
            assert torch.allclose(losses["loss_dice" + suffix], dice, atol=1e-6)

    from simformer.modeling.criterion import HOST_HAS_MASK, MASKS_WITH_MASK, host_has_mask

    for t in targets:
        t.pop("has_mask")
    shared = torch.cat([t["masks"] for t in targets])
    copies = [dict(t, **{HOST_HAS_MASK: f, MASKS_WITH_MASK: shared}) for t, f in zip(targets, host_has_mask(targets))]
    _, _, masks = criterion._matched_with_mask(copies, criterion.matcher(outputs, copies), torch.device("cpu"))
    assert masks is shared
