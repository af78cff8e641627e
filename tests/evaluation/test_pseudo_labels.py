"""Pseudo-label writer (spec §5.4) on hand-made predictions."""
import json
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from PIL import Image

from simformer.evaluation.pseudo_labels import PseudoLabelWriter, make_pseudo_label

# classes: 0 sky (base), 1 grass (base), 2 giraffe (novel), 3 zebra (novel)
IS_BASE = np.zeros(256, dtype=bool)
IS_BASE[[0, 1]] = True


def test_make_pseudo_label_hand_made():
    gt = np.array([[0, 0, 2, 2], [1, 1, 3, 255]])  # full labels (simulated data): 2 / 3 novel, 255 ignore
    pred = np.array([[2, 1, 2, 3], [0, 3, 1, 2]])
    out = make_pseudo_label(pred, gt, novel_tags=[2], is_base=IS_BASE)
    # base pixels keep their GT; predicted giraffe (a tag) kept elsewhere; zebra (not a tag) and base
    # predictions outside the base GT become ignore
    assert out.tolist() == [[0, 0, 2, 255], [1, 1, 255, 2]]
    assert out.dtype == np.uint8
    # real weak-shot labels (novel pixels already ignore) give the same result on the same prediction
    real = np.where(np.isin(gt, [2, 3]), 255, gt)
    assert np.array_equal(make_pseudo_label(pred, real, [2], IS_BASE), out)
    # no tags: only the base GT survives
    assert make_pseudo_label(pred, gt, [], IS_BASE).tolist() == [[0, 0, 255, 255], [1, 1, 255, 255]]


def test_make_pseudo_label_size_mismatch():
    with pytest.raises(ValueError, match="differ in size"):
        make_pseudo_label(np.zeros((2, 2), int), np.zeros((2, 3), int), [], IS_BASE)


def test_writer_writes_pngs_and_quality(tmp_path):
    name = f"test_pl_{uuid.uuid4().hex[:6]}"
    MetadataCatalog.get(name).set(stuff_classes=["sky", "grass", "giraffe", "zebra"], base_class_ids=[0, 1], novel_class_ids=[2, 3], ignore_label=255)
    try:
        gt = np.array([[0, 0, 2, 2], [1, 1, 3, 255]], dtype=np.uint8)
        Image.fromarray(gt).save(tmp_path / "a.png")
        pred = torch.tensor([[2, 1, 2, 3], [0, 3, 1, 2]])
        scores = torch.nn.functional.one_hot(pred, 4).permute(2, 0, 1).float()  # (K, H, W)
        out_dir = tmp_path / "pseudo"
        writer = PseudoLabelWriter(name, str(out_dir), distributed=False)
        writer.reset()
        writer.process([{"file_name": "a.jpg", "sem_seg_file_name": str(tmp_path / "a.png"), "novel_tags": [2]}], [{"sem_seg": scores}])
        result = writer.evaluate()["pseudo_labels"]
        written = np.asarray(Image.open(out_dir / "a.png"))
        assert written.tolist() == [[0, 0, 2, 255], [1, 1, 255, 2]]
        assert result["num_images"] == 1
        assert result["labelled_fraction"] == pytest.approx(100 * 6 / 8)
        assert result["novel_fraction"] == pytest.approx(100 * 2 / 8)
        # quality on the labelled pixels: giraffe predicted at (0,2) correct, at (1,3) on an ignore pixel
        assert result["quality_mIoU_novel"] == pytest.approx(100.0)
        assert json.load(open(out_dir / "pseudo_labels.json"))["num_images"] == 1
        with pytest.raises(ValueError, match="novel_tags"):
            writer.process([{"file_name": "b.jpg", "sem_seg_file_name": str(tmp_path / "a.png"), "novel_tags": [1]}], [{"sem_seg": scores}])
    finally:
        MetadataCatalog.remove(name)
