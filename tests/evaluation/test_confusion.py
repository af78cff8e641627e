"""Hand-checked tests of simformer.evaluation.confusion (pure NumPy)."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from simformer.evaluation.confusion import (
    confusion_matrix,
    harmonic_mean,
    segmentation_metrics,
    validate_groups,
)

NAMES = ["a", "b", "c", "d"]
# K = 4. Class 2 ("c") is predicted on real pixels but absent from the GT; class 3 ("d") is predicted
# only on ignored pixels (so it counts nowhere); 255 = ignore.
GT = np.array([[0, 0, 1, 255], [1, 1, 255, 0], [0, 1, 1, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 3], [1, 0, 0, 0], [2, 2, 1, 0]], dtype=np.int64)
# rows: prediction, columns: GT (column 4 = ignored pixels)
CONF = np.array(
    [
        [2, 1, 0, 0, 2],
        [1, 3, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ],
    dtype=np.int64,
)


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(PRED, GT, 4)
    assert conf.dtype == np.int64 and conf.shape == (5, 5)
    np.testing.assert_array_equal(conf, CONF)
    assert conf.sum() == GT.size


def test_confusion_matrix_custom_ignore_and_no_ignore():
    gt = GT.astype(np.int64)
    gt[gt == 255] = -1
    np.testing.assert_array_equal(confusion_matrix(PRED, gt, 4, ignore_label=-1), CONF)
    with pytest.raises(ValueError, match=r"\[255\]"):
        confusion_matrix(PRED, GT, 4, ignore_label=None)


def test_confusion_matrix_invalid_values():
    bad_gt = GT.copy()
    bad_gt[0, 0], bad_gt[1, 1] = 7, 4
    with pytest.raises(ValueError, match=r"gt values .*\[4, 7\]"):
        confusion_matrix(PRED, bad_gt, 4)
    bad_pred = PRED.copy()
    bad_pred[0, 0] = -1
    with pytest.raises(ValueError, match=r"pred values .*\[-1\]"):
        confusion_matrix(bad_pred, GT, 4)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(PRED[:2], GT, 4)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(PRED.astype(np.float32), GT, 4)
    with pytest.raises(ValueError, match="collides"):
        confusion_matrix(PRED, GT, 4, ignore_label=2)


def test_metrics_by_hand():
    # TP = [2, 3, 0, 0]; GT = [4, 5, 0, 0]; Pred = [3, 4, 2, 0]
    m = segmentation_metrics(CONF, NAMES)
    assert m["IoU-a"] == pytest.approx(100 * 2 / 5)
    assert m["IoU-b"] == pytest.approx(100 * 3 / 6)
    assert math.isnan(m["IoU-c"]) and math.isnan(m["IoU-d"])
    # mIoU's denominator counts "c" (predicted, absent from GT) but not "d" (never seen): 3 classes
    assert m["mIoU"] == pytest.approx(100 * (0.4 + 0.5) / 3)
    assert m["fwIoU"] == pytest.approx(100 * (4 / 9 * 0.4 + 5 / 9 * 0.5))
    assert m["ACC-a"] == pytest.approx(50.0) and m["ACC-b"] == pytest.approx(60.0)
    assert math.isnan(m["ACC-c"]) and math.isnan(m["ACC-d"])
    assert m["mACC"] == pytest.approx(55.0)
    assert m["pACC"] == pytest.approx(100 * 5 / 9)
    assert list(m)[:2] == ["mIoU", "fwIoU"]
    assert not any(k.startswith("mIoU_") for k in m) and "hIoU" not in m


def test_group_metrics_and_hiou_by_hand():
    m = segmentation_metrics(CONF, NAMES, {"base": [0, 2], "novel": [1, 3]})
    assert m["mIoU_base"] == pytest.approx(40.0)  # IoU-c is NaN, so only "a" counts
    assert m["mIoU_novel"] == pytest.approx(50.0)
    assert m["mACC_base"] == pytest.approx(50.0)
    assert m["mACC_novel"] == pytest.approx(60.0)
    assert m["hIoU"] == pytest.approx(2 * 40 * 50 / 90)
    # overall metrics are unchanged by groups
    assert m["mIoU"] == pytest.approx(30.0)


def test_group_nan_and_zero_hiou():
    m = segmentation_metrics(CONF, NAMES, {"base": [0, 1], "novel": [2, 3]})
    assert m["mIoU_base"] == pytest.approx(45.0)
    assert math.isnan(m["mIoU_novel"]) and math.isnan(m["hIoU"])
    m = segmentation_metrics(CONF, NAMES, {"novel": [1]})
    assert m["mIoU_novel"] == pytest.approx(50.0) and "hIoU" not in m
    # every prediction wrong: IoU 0 everywhere -> hIoU 0
    conf = np.zeros((3, 3), dtype=np.int64)
    conf[0, 1] = conf[1, 0] = 3
    m = segmentation_metrics(conf, ["x", "y"], {"base": [0], "novel": [1]})
    assert m["mIoU_base"] == 0.0 and m["mIoU_novel"] == 0.0 and m["hIoU"] == 0.0
    assert harmonic_mean(0.0, 0.0) == 0.0 and math.isnan(harmonic_mean(1.0, float("nan")))


def test_no_gt_pixel_gives_nan_without_warnings():
    conf = confusion_matrix(np.array([[0, 1]]), np.array([[255, 255]]), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = segmentation_metrics(conf, ["x", "y"], {"base": [0], "novel": [1]})
    assert all(math.isnan(v) for v in m.values()), m


def test_group_validation():
    with pytest.raises(ValueError, match=r"out of range.*\[4, 9\]"):
        validate_groups({"base": [0, 4, 9]}, 4)
    with pytest.raises(ValueError, match="class id 1 is in both groups 'base' and 'novel'"):
        segmentation_metrics(CONF, NAMES, {"base": [0, 1], "novel": [1, 2]})
    with pytest.raises(ValueError, match="duplicated"):
        validate_groups({"base": [0, 0]}, 4)
    with pytest.raises(ValueError, match="integers"):
        validate_groups({"base": [0.5]}, 4)
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        segmentation_metrics(CONF[:4, :4], NAMES)
    with pytest.raises(ValueError, match="unique"):
        segmentation_metrics(CONF, ["a", "a", "b", "c"])


def _brute_force(pred, gt, k, ignore):
    conf = np.zeros((k + 1, k + 1), dtype=np.int64)
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            g = gt[i, j]
            conf[pred[i, j], k if g == ignore else g] += 1
    return conf


@st.composite
def _pairs(draw):
    k = draw(st.integers(1, 6))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8))
    pred = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, k - 1)))
    gt = draw(hnp.arrays(np.uint8, shape, elements=st.sampled_from(list(range(k)) + [255])))
    return pred, gt, k


@settings(max_examples=150, deadline=None)
@given(_pairs())
def test_confusion_matrix_matches_brute_force(args):
    pred, gt, k = args
    np.testing.assert_array_equal(confusion_matrix(pred, gt, k), _brute_force(pred, gt, k, 255))
