"""Semantic-segmentation training mapper: read, augment image + label together, build per-class targets."""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances
from torch.nn import functional as F

from ..image_io import read_image_file, read_label_file
from ..transforms import ColorAugSSD
from .build import MAPPER_REGISTRY

__all__ = ["SemSegDatasetMapper", "SemSegTestMapper", "read_label_map", "label_map_to_targets"]

logger = logging.getLogger(__name__)


def read_label_map(path: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """Read a label PNG as (H, W) int64 and check that every value is a class id or the ignore value."""
    label = read_label_file(path)
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise ValueError(f"{path}: label ids {bad.tolist()[:10]} are neither a class id in [0, {num_classes}) nor the ignore value {ignore_label}")
    return label


def label_map_to_targets(sem_seg: torch.Tensor, ignore_label: int):
    """(H, W) int64 label map -> (classes (T,), masks (T, H, W) bool), one target per class present."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label]
    return classes, sem_seg[None] == classes[:, None, None]


@MAPPER_REGISTRY.register()
class SemSegDatasetMapper:
    """dataset dict (file_name, sem_seg_file_name) -> dict(image (3, H, W) uint8, sem_seg (H, W) int64,
    pad_mask (H, W) bool (True on padding), instances(gt_classes, gt_masks (T, H, W) bool)), augmented by resize-shortest-edge, random crop with
    category-area constraint, SSD colour jitter and horizontal flip; padded to ``size_divisibility`` with
    128 (image) / ignore (label)."""

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, num_classes, ignore_label, size_divisibility=-1, max_crop_tries=10):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.max_crop_tries = max_crop_tries
        logger.info(f"[{type(self).__name__}] augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        ignore_label = meta.get("ignore_label", 255)
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop_CategoryAreaConstraint(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, ignore_label))
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(ColorAugSSD(img_format=cfg.INPUT.FORMAT))
        if cfg.INPUT.FLIP_PROB > 0:
            augs.append(T.RandomFlip(prob=cfg.INPUT.FLIP_PROB))
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": ignore_label,
            "size_divisibility": cfg.INPUT.PAD_TO_SIZE,
        }

    def read(self, dataset_dict):
        """Image (H, W, 3) uint8 and label (H, W) int64 of a record, checked for matching sizes."""
        image = read_image_file(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" not in dataset_dict:
            raise KeyError(f"{dataset_dict['file_name']}: dataset dict has no 'sem_seg_file_name' (needed for training)")
        label = read_label_map(dataset_dict["sem_seg_file_name"], self.num_classes, self.ignore_label)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{dataset_dict['sem_seg_file_name']}: label size {label.shape} differs from image {dataset_dict['file_name']} size {image.shape[:2]}")
        # detectron2's geometric transforms resize uint8 maps with PIL (nearest); other dtypes go through
        # torch kernels that reject int64, so ids beyond 255 travel as float32 (exact up to 2**24).
        return image, label.astype(np.uint8 if max(self.num_classes - 1, self.ignore_label) <= 255 else np.float32)

    def augment(self, image, label):
        """Apply the augmentations; retry crops that contain no labelled pixel (up to max_crop_tries)."""
        for _ in range(self.max_crop_tries):
            aug_input = T.AugInput(image, sem_seg=label)
            self.augmentations(aug_input)
            if (aug_input.sem_seg != self.ignore_label).any():
                break
        return aug_input.image, aug_input.sem_seg

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, label = self.read(dataset_dict)
        if self.is_train:
            image, label = self.augment(image, label)
        # .copy(): fresh strides (ascontiguousarray keeps a flip's negative strides on 1-pixel-wide crops)
        image = torch.from_numpy(image.transpose(2, 0, 1).copy())
        sem_seg = torch.from_numpy(label.astype(np.int64))
        pad_mask = torch.zeros(sem_seg.shape, dtype=torch.bool)
        if self.size_divisibility > 0:
            h, w = sem_seg.shape
            pad = (0, max(self.size_divisibility - w, 0), 0, max(self.size_divisibility - h, 0))
            image = F.pad(image, pad, value=128).contiguous()
            sem_seg = F.pad(sem_seg, pad, value=self.ignore_label).contiguous()
            pad_mask = F.pad(pad_mask, pad, value=True).contiguous()
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["pad_mask"] = pad_mask
        classes, masks = label_map_to_targets(sem_seg, self.ignore_label)
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = classes
        instances.gt_masks = masks
        dataset_dict["instances"] = instances
        return dataset_dict


class SemSegTestMapper:
    """Inference mapper: read the image, resize its shortest edge to ``INPUT.MIN_SIZE_TEST`` (0 = keep),
    keep ``height``/``width`` (output size) and every file name for the evaluator."""

    def __init__(self, cfg):
        self.image_format = cfg.INPUT.FORMAT
        min_size = cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge(min_size, cfg.INPUT.MAX_SIZE_TEST) if min_size > 0 else None

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_file(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return dataset_dict
