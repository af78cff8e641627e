"""Boundary IoU (simformer.evaluation.confusion.boundary_*) by hand and against a brute-force reference,
and the evaluator's opt-in ``boundary_tolerance``."""
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from simformer.evaluation import SemSegEvaluator, format_metrics_table
from simformer.evaluation.confusion import boundary_counts, boundary_metrics, label_boundary, segmentation_metrics

IGNORE = 255


def _brute_force_boundary(label, d):
    h, w = label.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            window = label[max(0, y - d) : y + d + 1, max(0, x - d) : x + d + 1]
            out[y, x] = (window != label[y, x]).any()
    return out


def _brute_force_counts(pred, gt, k, d):
    gb, pb = _brute_force_boundary(gt, d), _brute_force_boundary(pred, d)
    counts = np.zeros((3, k), np.int64)
    for y, x in np.ndindex(gt.shape):
        if gt[y, x] == IGNORE:
            continue
        if gb[y, x]:
            counts[1, gt[y, x]] += 1
        if pb[y, x]:
            counts[2, pred[y, x]] += 1
        if gb[y, x] and pb[y, x] and gt[y, x] == pred[y, x]:
            counts[0, gt[y, x]] += 1
    return counts


def test_label_boundary_by_hand():
    label = np.array([[0, 0, 0, 1, 1, 1]] * 3)
    assert label_boundary(label, 1)[0].tolist() == [False, False, True, True, False, False]
    assert label_boundary(label, 2)[1].tolist() == [False, True, True, True, True, False]
    assert not label_boundary(np.zeros((4, 4), np.int64), 3).any()  # the image frame is not a contour
    with pytest.raises(ValueError, match="positive"):
        label_boundary(label, 0)


def test_boundary_counts_by_hand():
    gt = np.array([[0, 0, 0, 1, 1, 1]] * 2)
    pred = np.array([[0, 0, 0, 0, 1, 1]] * 2)  # the edge moved one pixel right
    # d = 1: GT band columns 2 (class 0) and 3 (class 1); predicted band columns 3 (class 0) and 4 (class 1)
    counts = boundary_counts(pred, gt, 2, IGNORE, tolerance=1)
    np.testing.assert_array_equal(counts, [[0, 0], [2, 2], [2, 2]])
    # d = 2: GT bands cols 1-2 / 3-4, predicted 2-3 / 4-5: each class shares one column (2 pixels)
    counts = boundary_counts(pred, gt, 2, IGNORE, tolerance=2)
    np.testing.assert_array_equal(counts, [[2, 2], [4, 4], [4, 4]])
    m = boundary_metrics(counts, ["a", "b"], {"base": [0], "novel": [1]})
    assert list(m) == ["bIoU", "bIoU-a", "bIoU-b", "bIoU_base", "bIoU_novel"]
    assert m["bIoU"] == pytest.approx(100 * 2 / 6) and m["bIoU_novel"] == pytest.approx(100 * 2 / 6)
    perfect = boundary_metrics(boundary_counts(gt, gt, 2, IGNORE, 2), ["a", "b"])
    assert perfect["bIoU"] == pytest.approx(100.0)


def test_ignore_pixels_are_contours_but_never_counted():
    gt = np.array([[0, 0, IGNORE, IGNORE]])
    pred = np.array([[0, 0, 1, 1]])
    counts = boundary_counts(pred, gt, 2, IGNORE, tolerance=1)
    # pixel 1 is on the 0 <-> ignore contour in GT and on the 0 <-> 1 contour in the prediction; the
    # predicted class-1 band lies on ignored pixels only and is not counted
    np.testing.assert_array_equal(counts, [[1, 0], [1, 0], [1, 0]])
    m = boundary_metrics(counts, ["a", "b"])
    assert m["bIoU-a"] == 100.0 and math.isnan(m["bIoU-b"]) and m["bIoU"] == 100.0


@pytest.mark.parametrize("d", [1, 2, 3])
def test_boundary_counts_match_brute_force(d):
    rng = np.random.RandomState(d)
    for _ in range(5):
        gt = np.repeat(np.repeat(rng.randint(0, 4, (4, 5)), 3, 0), 2, 1)[: 11, :9]
        gt[rng.rand(*gt.shape) < 0.1] = IGNORE
        pred = np.repeat(np.repeat(rng.randint(0, 4, (6, 5)), 2, 0), 2, 1)[:11, :9]
        np.testing.assert_array_equal(_brute_force_boundary(gt, d), label_boundary(gt, d))
        np.testing.assert_array_equal(boundary_counts(pred, gt, 4, IGNORE, d), _brute_force_counts(pred, gt, 4, d))


def test_boundary_input_errors():
    with pytest.raises(ValueError, match=r"gt values"):
        boundary_counts(np.zeros((2, 2), np.int64), np.full((2, 2), 7), 2, IGNORE, 1)
    with pytest.raises(ValueError, match="H x W"):
        boundary_counts(np.zeros(4, np.int64), np.zeros(4, np.int64), 2, IGNORE, 1)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        boundary_metrics(np.zeros((3, 3)), ["a", "b"])


NAMES = ["a", "b", "c"]
GTS = [np.array([[0, 0, 1, 1, 2, 2]] * 4, np.uint8), np.array([[1, 1, 1, IGNORE]] * 3, np.uint8)]
PREDS = [np.array([[0, 1, 1, 1, 2, 2]] * 4), np.array([[1, 1, 0, 0]] * 3)]


@pytest.fixture
def dataset(tmp_path):
    name = f"simformer_biou_test_{uuid.uuid4().hex}"
    paths = []
    for i, gt in enumerate(GTS):
        paths.append(str(tmp_path / f"label_{i}.png"))
        Image.fromarray(gt, mode="L").save(paths[-1])
    DatasetCatalog.register(name, lambda: [{"sem_seg_file_name": p} for p in paths])
    MetadataCatalog.get(name).set(stuff_classes=list(NAMES), ignore_label=IGNORE, base_class_ids=[0, 1], novel_class_ids=[2])
    yield name, paths
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _scores(pred):
    return torch.nn.functional.one_hot(torch.from_numpy(pred), len(NAMES)).permute(2, 0, 1).float()


def test_evaluator_reports_boundary_iou_when_asked(dataset, tmp_path):
    name, paths = dataset
    inputs = [{"sem_seg_file_name": p} for p in paths]
    outputs = [{"sem_seg": _scores(p)} for p in PREDS]
    plain = SemSegEvaluator(name, distributed=False)
    plain.process(inputs, outputs)
    without = plain.evaluate()["sem_seg"]
    assert not any(k.startswith("bIoU") for k in without)

    out_dir = tmp_path / "out"
    evaluator = SemSegEvaluator(name, distributed=True, output_dir=str(out_dir), boundary_tolerance=1)  # world size 1
    evaluator.process(inputs, outputs)
    m = evaluator.evaluate()["sem_seg"]
    keys = list(m)
    assert keys[: len(without)] == list(without)  # existing keys and values unchanged, boundary keys appended
    assert all(m[k] == without[k] or (math.isnan(m[k]) and math.isnan(without[k])) for k in without)
    assert keys[len(without) :] == ["bIoU", "bIoU-a", "bIoU-b", "bIoU-c", "bIoU_base", "bIoU_novel"]
    counts = sum(boundary_counts(p, g, 3, IGNORE, 1) for p, g in zip(PREDS, GTS))
    expected = boundary_metrics(counts, NAMES, {"base": [0, 1], "novel": [2]})
    assert all(m[k] == pytest.approx(v) for k, v in expected.items())
    assert m["bIoU-c"] == pytest.approx(100.0)  # the b|c edge is predicted exactly
    assert torch.load(out_dir / "sem_seg_evaluation.pth")["bIoU"] == pytest.approx(m["bIoU"])
    assert "bIoU" in format_metrics_table(m).splitlines()[0]
    assert segmentation_metrics(evaluator._conf, NAMES, evaluator.groups)["mIoU"] == pytest.approx(m["mIoU"])

    with pytest.raises(ValueError, match="boundary_tolerance"):
        SemSegEvaluator(name, boundary_tolerance=0)
