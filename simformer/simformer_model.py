"""SimFormer meta-architecture: MaskFormer trained with weak-shot targets and SimFormer's losses.

Same network and inference as :class:`MaskFormer`; the criterion adds the complementary loss and, for
batches of image pairs (``PairDatasetMapper``: each input dict carries its partner under ``"pair"``),
SimNet's base pixel-pair loss and the similarity distillation (spec §4). Pairs are flattened to the
batch [A1, B1, A2, B2, ...], so ``SOLVER.IMS_PER_BATCH`` counts pairs and any number of pairs per device
works. The optional pixel contrast (``MODEL.SIMFORMER.PIXEL_CONTRAST``) adds a training-only projection head
in the criterion and ``loss_pixel_contrast`` for any batch. With every SimFormer weight at 0 this is
MaskFormer (used for the oracle, base-only and retraining stages).
"""
from typing import Dict, List

import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from .model import MaskFormer
from .modeling.criterion import point_sampling_kwargs
from .modeling.pixel_contrast_head import PixelContrast, PixelContrastMemory
from .modeling.simformer_criterion import SimFormerCriterion
from .modeling.simnet import RunningPairBalance, SimNet

__all__ = ["SimFormer", "STUDENT_PAIRS"]

STUDENT_PAIRS = ("cross", "same")


def _novel_ids_of_training_data(cfg):
    ids = {tuple(sorted(MetadataCatalog.get(n).get("novel_class_ids", None) or ())) for n in cfg.DATASETS.TRAIN}
    if len(ids) > 1:
        raise ValueError(f"SimFormer: the datasets of DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} have different novel classes")
    return list(ids.pop()) if ids else []


def _build_pixel_contrast(cfg) -> PixelContrast:
    """The training-only pixel contrast module of MODEL.SIMFORMER.PIXEL_CONTRAST (head on the mask features)."""
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


@META_ARCH_REGISTRY.register()
class SimFormer(MaskFormer):
    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        mf, sf = cfg.MODEL.MASK_FORMER, cfg.MODEL.SIMFORMER
        cis = sf.CROSS_IMG_SIM
        if cis.STUDENT_PAIRS not in STUDENT_PAIRS:
            raise ValueError(f"MODEL.SIMFORMER.CROSS_IMG_SIM.STUDENT_PAIRS must be one of {STUDENT_PAIRS}, got {cis.STUDENT_PAIRS!r}")
        if cis.DISTILL_WEIGHT != 0 and cis.BASE_WEIGHT == 0:
            raise ValueError("MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_WEIGHT > 0 needs SimNet, i.e. CROSS_IMG_SIM.BASE_WEIGHT > 0")
        use_pairs = cis.BASE_WEIGHT != 0
        if use_pairs and cfg.INPUT.DATASET_MAPPER_NAME != "PairDatasetMapper":
            raise ValueError(
                "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT > 0 trains on image pairs: set INPUT.DATASET_MAPPER_NAME "
                f"'PairDatasetMapper' (got {cfg.INPUT.DATASET_MAPPER_NAME!r})"
            )
        use_contrast = sf.PIXEL_CONTRAST.WEIGHT != 0
        novel = _novel_ids_of_training_data(cfg) if (sf.COMP_LOSS_WEIGHT != 0 or use_pairs or use_contrast) else []
        ignore_label = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", 255) if cfg.DATASETS.TRAIN else 255
        simnet = SimNet(cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, cis.HIDDEN_DIM, cis.LAYER_NUM, cis.BN) if use_pairs else None
        ret["criterion"] = SimFormerCriterion(
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            ret["criterion"].matcher,
            mf.NO_OBJECT_WEIGHT,
            **point_sampling_kwargs(cfg),
            novel_class_ids=novel,
            ignore_label=ignore_label,
            comp_loss=sf.COMP_LOSS_WEIGHT != 0,
            ignore_proposal_logit=sf.IGNORE_PROPOSAL_LOGIT,
            comp_focal_weight=mf.MASK_WEIGHT,
            comp_dice_weight=mf.DICE_WEIGHT,
            simnet=simnet,
            distill=use_pairs and cis.DISTILL_WEIGHT != 0,
            distill_func=cis.DISTILL_FUNC,
            distill_to=cis.DISTILL_TO,
            cross_image_student=cis.STUDENT_PAIRS == "cross",
            base_points=cis.BASE_POINT_NUM,
            novel_points=cis.NOVEL_POINT_NUM,
            positive_fraction=cis.POSITIVE_FRACTION,
            base_detach=cis.BASE_DETACH,
            teacher_detach=cis.TEACH_DETACH,
            balance=RunningPairBalance(cis.BALANCE_WINDOW, cis.BALANCE_STRIDE) if use_pairs else None,
            pixel_contrast=_build_pixel_contrast(cfg) if use_contrast else None,
            contrast_classes=sf.PIXEL_CONTRAST.CLASSES,
        )
        weights = dict(ret["weight_dict"])
        if sf.COMP_LOSS_WEIGHT != 0:
            weights["loss_comp"] = sf.COMP_LOSS_WEIGHT
            if mf.DEEP_SUPERVISION:
                weights.update({f"loss_comp_{i}": sf.COMP_LOSS_WEIGHT for i in range(mf.DEC_LAYERS - 1)})
        if use_pairs:
            weights["loss_cro_sim"] = cis.BASE_WEIGHT
            if cis.DISTILL_WEIGHT != 0:
                weights["loss_cro_dit"] = cis.DISTILL_WEIGHT
        if use_contrast:
            weights["loss_pixel_contrast"] = sf.PIXEL_CONTRAST.WEIGHT
        ret["weight_dict"] = weights
        return ret

    @staticmethod
    def flatten_pairs(batched_inputs: List[Dict]) -> List[Dict]:
        """[A1{pair: B1}, A2{pair: B2}, ...] -> [A1, B1, A2, B2, ...]; unpaired batches pass through."""
        paired = ["pair" in x for x in batched_inputs]
        if not any(paired):
            return batched_inputs
        if not all(paired):
            raise ValueError("SimFormer: a batch mixes paired and unpaired inputs")
        return [y for x in batched_inputs for y in (x, x["pair"])]

    def prepare_targets(self, batched_inputs: List[Dict], images) -> List[Dict]:
        """MaskFormer's targets plus ``sem_seg_raw`` (H_pad, W_pad) int64 and ``pad`` (H_pad, W_pad) bool."""
        targets = super().prepare_targets(batched_inputs, images)
        h_pad, w_pad = images.tensor.shape[-2:]
        ignore = self.criterion.ignore_label
        for t, x in zip(targets, batched_inputs):
            raw = x.get("sem_seg_raw", x.get("sem_seg"))
            if raw is None:
                raise KeyError("SimFormer training needs 'sem_seg' (or 'sem_seg_raw') in each input dict")
            h, w = raw.shape
            full = torch.full((h_pad, w_pad), ignore, dtype=torch.int64, device=self.device)
            full[:h, :w] = raw.to(self.device)
            pad = torch.ones((h_pad, w_pad), dtype=torch.bool, device=self.device)
            pad[:h, :w] = x["pad_mask"].to(self.device) if "pad_mask" in x else False
            t["sem_seg_raw"], t["pad"] = full, pad
        return targets

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            batched_inputs = self.flatten_pairs(batched_inputs)
        elif any("pair" in x for x in batched_inputs):
            raise ValueError("SimFormer inference takes single images, got paired inputs")
        return super().forward(batched_inputs)
