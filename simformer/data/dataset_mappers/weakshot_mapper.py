"""Weak-shot training mapper (spec §1.2): base classes get pixel masks, novel classes image-level targets."""
import logging
import os

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances

from ...evaluation.pseudo_labels import pseudo_label_path
from ..datasets.weakshot import WEAKSHOT_TYPES
from ..tag_noise import noisy_tags
from .build import MAPPER_REGISTRY
from .sem_seg_mapper import SemSegDatasetMapper

__all__ = ["WeakShotDatasetMapper", "IMAGE_LEVEL_LABELS"]

logger = logging.getLogger(__name__)

IMAGE_LEVEL_LABELS = ("image", "crop", "none")


@MAPPER_REGISTRY.register()
class WeakShotDatasetMapper(SemSegDatasetMapper):
    """dataset dict -> dict with

    * ``image`` (3, H, W) uint8 and the augmentation / padding of :class:`SemSegDatasetMapper`;
    * ``sem_seg`` (H, W) int64: the augmented label map with novel pixels set to ignore (kept when
      ``novel_has_mask``); padding is ignore;
    * ``sem_seg_raw`` (H, W) int64: the same map with the novel ids (the label map itself for real
      weak-shot data, whose PNGs carry no novel pixels), for the cross-image losses;
    * ``instances``: ``gt_classes`` (T,), ``gt_masks`` (T, H, W) bool, ``gt_has_mask`` (T,) bool. Every
      base class in the crop has its mask and ``has_mask=True``; then every novel class of the image
      level labels with an all-zero mask and ``has_mask=False`` (has-mask targets first, each group by
      ascending id). With ``novel_has_mask`` (retraining on pseudo-labels) every class in the crop is an
      ordinary mask target and there are no image-level targets.

    Image-level novel labels: ``"image"`` = the dict's ``novel_tags`` (the whole image, true to the
    setting); ``"crop"`` = the novel ids still in the augmented label map (the official behaviour; needs
    full labels, so simulated data only); ``"none"`` = no novel targets at all (base-only training: novel
    classes unseen, their pixels ignored). With ``pseudo_label_dir`` the label map is read from
    ``<pseudo_label_dir>/<basename of sem_seg_file_name>``; a missing file is an error.
    """

    @configurable
    def __init__(
        self,
        is_train=True,
        *,
        novel_class_ids,
        weakshot_type="simulated",
        image_level_labels="image",
        novel_has_mask=False,
        pseudo_label_dir="",
        tag_noise=(0.0, 0.0, 0),
        keep_lost_tags=False,
        **kwargs,
    ):
        super().__init__(is_train, **kwargs)
        if image_level_labels not in IMAGE_LEVEL_LABELS:
            raise ValueError(f"INPUT.WEAKSHOT.IMAGE_LEVEL_LABELS must be one of {IMAGE_LEVEL_LABELS}, got {image_level_labels!r}")
        if weakshot_type not in WEAKSHOT_TYPES:
            raise ValueError(f"WeakShotDatasetMapper: weakshot_type must be one of {WEAKSHOT_TYPES}, got {weakshot_type!r}")
        novel = sorted(int(c) for c in novel_class_ids)
        if not novel or len(set(novel)) != len(novel) or not 0 <= novel[0] <= novel[-1] < self.num_classes:
            raise ValueError(f"WeakShotDatasetMapper: novel_class_ids must be distinct ids in [0, {self.num_classes}), got {novel}")
        if weakshot_type == "real" and image_level_labels == "crop":
            raise ValueError(
                "INPUT.WEAKSHOT.IMAGE_LEVEL_LABELS='crop' needs the novel pixels, but the training dataset is real "
                "weak-shot data (base-only labels + image tags); use 'image'"
            )
        if weakshot_type == "real" and novel_has_mask and not pseudo_label_dir:
            raise ValueError(
                "INPUT.WEAKSHOT.NOVEL_HAS_MASK=True with real weak-shot data needs INPUT.WEAKSHOT.PSEUDO_LABEL_DIR "
                "(its label PNGs have no novel pixels)"
            )
        if novel_has_mask and not pseudo_label_dir:
            logger.warning("INPUT.WEAKSHOT.NOVEL_HAS_MASK=True without pseudo-labels: training on the ground-truth novel masks (an oracle)")
        self.novel_class_ids = novel
        self.tag_noise = tuple(tag_noise)  # (drop, add, seed) of simformer.data.tag_noise.noisy_tags
        if any(self.tag_noise[:2]) and image_level_labels != "image":
            raise ValueError(f"INPUT.WEAKSHOT.TAG_NOISE applies to image-level tags (IMAGE_LEVEL_LABELS 'image'), got {image_level_labels!r}")
        if keep_lost_tags and not (novel_has_mask and pseudo_label_dir and image_level_labels == "image"):
            raise ValueError(
                "INPUT.WEAKSHOT.KEEP_LOST_TAGS applies to retraining on pseudo-labels: it needs NOVEL_HAS_MASK True, "
                f"a PSEUDO_LABEL_DIR and IMAGE_LEVEL_LABELS 'image' (got {novel_has_mask}, {pseudo_label_dir!r}, {image_level_labels!r})"
            )
        self.keep_lost_tags = bool(keep_lost_tags)
        self.weakshot_type = weakshot_type
        self.image_level_labels = image_level_labels
        self.novel_has_mask = bool(novel_has_mask)
        self.pseudo_label_dir = os.path.abspath(os.path.expanduser(pseudo_label_dir)) if pseudo_label_dir else ""
        # is_novel[v]: label value v is a novel class (indexable by every class id and the ignore value)
        self._is_novel = torch.zeros(max(self.num_classes, self.ignore_label + 1), dtype=torch.bool)
        self._is_novel[novel] = True
        logger.info(
            f"[WeakShotDatasetMapper] {weakshot_type} weak-shot data, novel ids {novel}, image-level labels from the "
            f"{image_level_labels}, novel_has_mask={self.novel_has_mask}, pseudo-labels: {self.pseudo_label_dir or 'none'}"
        )

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = super().from_config(cfg, is_train)
        splits = {}
        for name in cfg.DATASETS.TRAIN:
            meta = MetadataCatalog.get(name)
            if meta.get("novel_class_ids", None) is None:
                raise KeyError(
                    f"WeakShotDatasetMapper: metadata of training dataset {name!r} (DATASETS.TRAIN) has no 'novel_class_ids'; "
                    "register it with register_simulated_weakshot / register_real_weakshot (simformer/data/datasets/weakshot.py)"
                )
            splits[name] = (tuple(sorted(meta.novel_class_ids)), meta.get("weakshot_type", "simulated"))
        if len(set(splits.values())) > 1:
            raise ValueError(f"WeakShotDatasetMapper: the datasets of DATASETS.TRAIN differ in novel classes or weak-shot type: {splits}")
        novel, weakshot_type = splits[cfg.DATASETS.TRAIN[0]]
        ws = cfg.INPUT.WEAKSHOT
        ret.update(
            novel_class_ids=list(novel),
            weakshot_type=weakshot_type,
            image_level_labels=ws.IMAGE_LEVEL_LABELS,
            novel_has_mask=ws.NOVEL_HAS_MASK,
            pseudo_label_dir=ws.PSEUDO_LABEL_DIR,
            tag_noise=(ws.TAG_NOISE.DROP, ws.TAG_NOISE.ADD, ws.TAG_NOISE.SEED),
            keep_lost_tags=ws.KEEP_LOST_TAGS,
        )
        return ret

    def pseudo_label_path(self, dataset_dict):
        """``<pseudo_label_dir>/<basename of sem_seg_file_name>``."""
        return pseudo_label_path(self.pseudo_label_dir, dataset_dict["sem_seg_file_name"])

    def read(self, dataset_dict):
        """Image and label map; the label from the pseudo-label folder when one is set."""
        if self.pseudo_label_dir:
            if "sem_seg_file_name" not in dataset_dict:
                raise KeyError(f"{dataset_dict['file_name']}: dataset dict has no 'sem_seg_file_name' (names the pseudo-label file)")
            path = self.pseudo_label_path(dataset_dict)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"pseudo-label '{path}' of image '{dataset_dict['file_name']}' does not exist "
                    f"(INPUT.WEAKSHOT.PSEUDO_LABEL_DIR={self.pseudo_label_dir!r}); write pseudo-labels for every "
                    "training image first (the ground truth is never used in their place)"
                )
            dataset_dict = dict(dataset_dict, sem_seg_file_name=path)
        image, label = super().read(dataset_dict)
        if self.weakshot_type == "real" and not self.pseudo_label_dir:
            novel = np.intersect1d(np.unique(label), self.novel_class_ids)
            if novel.size:
                raise ValueError(
                    f"{dataset_dict['sem_seg_file_name']}: real weak-shot label map holds pixels of novel classes "
                    f"{novel.astype(int).tolist()}; novel pixels must be the ignore value {self.ignore_label} (tags name the novel classes)"
                )
        return image, label

    def _image_level_novel(self, dataset_dict, crop_classes):
        """Novel ids of the image-level targets, ascending (int64)."""
        if self.image_level_labels == "crop":
            return crop_classes[self._is_novel[crop_classes]]
        if self.image_level_labels == "none":
            return crop_classes.new_zeros(0)
        if "novel_tags" not in dataset_dict:
            raise KeyError(
                f"{dataset_dict['file_name']}: dataset dict has no 'novel_tags' (needed with INPUT.WEAKSHOT.IMAGE_LEVEL_LABELS="
                "'image'); register the dataset with register_simulated_weakshot / register_real_weakshot"
            )
        tags = sorted(set(dataset_dict["novel_tags"]))
        if any(self.tag_noise[:2]):
            key = dataset_dict.get("image_id", dataset_dict["file_name"])
            tags = noisy_tags(tags, self.novel_class_ids, key, *self.tag_noise)
        tags = torch.as_tensor(tags, dtype=torch.int64)
        if tags.numel() and (tags.min() < 0 or tags.max() >= self.num_classes or not bool(self._is_novel[tags].all())):
            raise ValueError(f"{dataset_dict['file_name']}: novel_tags {tags.tolist()} are not all novel class ids {self.novel_class_ids}")
        return tags

    def __call__(self, dataset_dict):
        out = super().__call__(dataset_dict)  # deep copy, read, augment, pad; one mask target per class in the crop
        raw = out["sem_seg"]
        out["sem_seg_raw"] = raw
        inst = out["instances"]
        if self.novel_has_mask:
            inst.gt_has_mask = torch.ones(len(inst), dtype=torch.bool)
            if self.keep_lost_tags:  # tagged novel classes the pseudo-label has no pixel of: image-level targets
                tags = self._image_level_novel(out, inst.gt_classes)
                lost = tags[~torch.isin(tags, inst.gt_classes)]
                if lost.numel():
                    targets = Instances(inst.image_size)
                    targets.gt_classes = torch.cat([inst.gt_classes, lost])
                    targets.gt_masks = torch.cat([inst.gt_masks, inst.gt_masks.new_zeros((len(lost), *raw.shape))])
                    targets.gt_has_mask = torch.arange(len(inst) + len(lost)) < len(inst)
                    out["instances"] = targets
            return out
        out["sem_seg"] = raw.masked_fill(self._is_novel[raw], self.ignore_label)
        is_base = ~self._is_novel[inst.gt_classes]
        novel = self._image_level_novel(out, inst.gt_classes)
        num_base, num_novel = int(is_base.sum()), len(novel)
        targets = Instances(inst.image_size)
        targets.gt_classes = torch.cat([inst.gt_classes[is_base], novel])
        targets.gt_masks = torch.cat([inst.gt_masks[is_base], inst.gt_masks.new_zeros((num_novel, *raw.shape))])
        targets.gt_has_mask = torch.arange(num_base + num_novel) < num_base
        out["instances"] = targets
        return out
