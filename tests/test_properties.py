"""Property-based tests (hypothesis): the training mappers keep image and label aligned and never put a
mask on an ignore pixel; the evaluator equals a brute-force per-pixel computation."""
import os
import tempfile
import uuid

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from simformer.data.dataset_mappers.sem_seg_mapper import SemSegDatasetMapper
from simformer.data.dataset_mappers.weakshot_mapper import WeakShotDatasetMapper
from simformer.evaluation import SemSegEvaluator

IGNORE = 255
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encode(label):
    """Image channel 0 = a function of the label (ignore -> 250), channels 1, 2 = the pixel position."""
    h, w = label.shape
    r = np.where(label == IGNORE, 250, label.astype(np.int64) * 20).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    return np.stack([r, (xx * 5 % 256).astype(np.uint8), (yy * 3 % 256).astype(np.uint8)], -1)


@st.composite
def scenes(draw):
    """(label map, K, crop size, size divisibility) with random sizes, blocks of classes and ignore."""
    k = draw(st.integers(1, 6))
    h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    rng = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    label = rng.randint(0, k, (h, w)).astype(np.uint8)
    for _ in range(draw(st.integers(0, 3))):  # rectangles of ignore / single classes
        y0, x0 = rng.randint(0, h), rng.randint(0, w)
        label[y0 : y0 + rng.randint(1, h + 1), x0 : x0 + rng.randint(1, w + 1)] = rng.choice([IGNORE] + list(range(k)))
    crop = (draw(st.integers(1, h)), draw(st.integers(1, w)))
    divisibility = draw(st.sampled_from([-1, max(h, w), max(h, w) + draw(st.integers(1, 8))]))
    return label, k, crop, divisibility


def _write(folder, label):
    image_path, label_path = os.path.join(folder, "x.png"), os.path.join(folder, "x_label.png")
    Image.fromarray(_encode(label)).save(image_path)
    Image.fromarray(label).save(label_path)
    return {"file_name": image_path, "sem_seg_file_name": label_path}


def _check_alignment_and_masks(out, label, k, ignore=IGNORE):
    image, sem_seg, pad = out["image"], out["sem_seg"], out["pad_mask"]
    assert image.shape[1:] == sem_seg.shape == pad.shape
    assert bool((sem_seg[pad] == ignore).all()) and bool((image[:, pad] == 128).all())
    valid = ~pad
    # image and label aligned: channel 0 encodes the label of the same source pixel
    raw = out.get("sem_seg_raw", sem_seg)  # the weak-shot mapper hides novel pixels in sem_seg only
    expected_r = torch.where(raw == ignore, torch.tensor(250), raw * 20)
    assert torch.equal(image[0][valid].long(), expected_r[valid])
    assert set(torch.unique(raw).tolist()) <= set(np.unique(label).tolist()) | {ignore}
    inst = out["instances"]
    masks, classes = inst.gt_masks, inst.gt_classes
    has_mask = inst.gt_has_mask if inst.has("gt_has_mask") else torch.ones(len(inst), dtype=torch.bool)
    assert masks.shape[1:] == sem_seg.shape and len(set(classes.tolist())) == len(classes)
    assert not bool(masks[:, sem_seg == ignore].any())  # never a mask on an ignore (or padding) pixel
    assert int(masks.sum(0).max()) <= 1  # disjoint
    for c, m, hm in zip(classes.tolist(), masks, has_mask.tolist()):
        assert 0 <= c < k
        assert torch.equal(m, sem_seg == c) if hm else not bool(m.any())
    assert torch.equal(masks[has_mask].any(0), sem_seg != ignore)


@SETTINGS
@given(scenes(), st.integers(0, 2**31 - 1))
def test_sem_seg_mapper_keeps_image_and_label_aligned(scene, seed):
    label, k, crop, divisibility = scene
    augs = [T.RandomCrop_CategoryAreaConstraint("absolute", crop, 1.0, IGNORE), T.RandomFlip(prob=0.5)]
    mapper = SemSegDatasetMapper(True, augmentations=augs, image_format="RGB", num_classes=k, ignore_label=IGNORE, size_divisibility=divisibility)
    with tempfile.TemporaryDirectory() as folder:
        record = _write(folder, label)
        np.random.seed(seed)
        out = mapper(record)
    assert tuple(out["sem_seg"].shape) == (max(crop[0], divisibility), max(crop[1], divisibility))
    _check_alignment_and_masks(out, label, k)


@SETTINGS
@given(scenes(), st.integers(0, 2**31 - 1), st.data())
def test_weakshot_mapper_hides_novel_pixels(scene, seed, data):
    label, k, crop, divisibility = scene
    novel = data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    augs = [T.RandomCrop_CategoryAreaConstraint("absolute", crop, 1.0, IGNORE), T.RandomFlip(prob=0.5)]
    mapper = WeakShotDatasetMapper(
        True, augmentations=augs, image_format="RGB", num_classes=k, ignore_label=IGNORE, size_divisibility=divisibility,
        novel_class_ids=novel, weakshot_type="simulated", image_level_labels="image",
    )
    with tempfile.TemporaryDirectory() as folder:
        record = _write(folder, label)
        record["novel_tags"] = sorted(set(np.unique(label).tolist()) & set(novel))
        np.random.seed(seed)
        out = mapper(record)
    _check_alignment_and_masks(out, label, k)
    assert not bool(np.isin(out["sem_seg"].numpy(), novel).any())  # novel pixels are ignore in sem_seg
    inst = out["instances"]
    assert sorted(inst.gt_classes[~inst.gt_has_mask].tolist()) == record["novel_tags"]


# ------------------------------------------------------------------------------------------------ evaluator
def _brute_force(preds, gts, k):
    """Per-pixel loops: confusion matrix (rows prediction, column k = ignored ground truth) and metrics."""
    conf = np.zeros((k + 1, k + 1), np.int64)
    tp, gt_count, pred_count = [0] * k, [0] * k, [0] * k
    for pred, gt in zip(preds, gts):
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            conf[p, k if g == IGNORE else g] += 1
            if g == IGNORE:
                continue
            gt_count[g] += 1
            pred_count[p] += 1
            tp[g] += p == g
    has_gt = [c for c in range(k) if gt_count[c] > 0]
    seen = [c for c in range(k) if gt_count[c] + pred_count[c] > 0]
    iou = {c: tp[c] / (gt_count[c] + pred_count[c] - tp[c]) for c in has_gt}
    acc = {c: tp[c] / gt_count[c] for c in has_gt}
    total = sum(gt_count)
    metrics = {
        "mIoU": 100 * sum(iou.values()) / len(seen) if seen else float("nan"),
        "mACC": 100 * sum(acc.values()) / len(has_gt) if has_gt else float("nan"),
        "pACC": 100 * sum(tp) / total if total else float("nan"),
        "fwIoU": 100 * sum(gt_count[c] / total * iou[c] for c in has_gt) if total else float("nan"),
    }
    for c in range(k):
        metrics[f"IoU-{c}"] = 100 * iou[c] if c in iou else float("nan")
        metrics[f"ACC-{c}"] = 100 * acc[c] if c in acc else float("nan")
    return conf, metrics


@SETTINGS
@given(st.integers(1, 6), st.lists(st.tuples(st.integers(1, 16), st.integers(1, 16)), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_evaluator_equals_brute_force(k, sizes, seed):
    rng = np.random.RandomState(seed)
    name = f"_hyp_eval_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(ignore_label=IGNORE)
    try:
        evaluator = SemSegEvaluator(name, distributed=False, num_classes=k)
        preds, gts = [], []
        with tempfile.TemporaryDirectory() as folder:
            for i, (h, w) in enumerate(sizes):
                gt = rng.randint(0, k, (h, w)).astype(np.uint8)
                gt[rng.rand(h, w) < rng.choice([0.0, 0.3, 1.0])] = IGNORE
                scores = torch.from_numpy(rng.rand(k, h, w).astype(np.float32))
                path = os.path.join(folder, f"{i}.png")
                Image.fromarray(gt).save(path)
                evaluator.process([{"sem_seg_file_name": path}], [{"sem_seg": scores}])
                preds.append(scores.argmax(0).numpy())
                gts.append(gt)
            metrics = evaluator.evaluate()["sem_seg"]
        conf, expected = _brute_force(preds, gts, k)
        assert np.array_equal(evaluator._conf, conf)
        for key, value in expected.items():
            assert (np.isnan(value) and np.isnan(metrics[key])) or metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    finally:
        MetadataCatalog.remove(name)
