"""simformer-tags: make (tags + base-only labels from full labels), check (statistics, problems), audit
(ranking by disagreement between predicted novel classes and tags)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from simformer.data.datasets.weakshot import register_real_weakshot
from simformer.tools.predict import build_cfg
from simformer.tools.tags import audit_scores, check_tags, main
from tests.data.test_weakshot_training import BASE_CONFIG, CLASSES, NOVEL, TINY, _write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tags"))
    _write_dataset(root, n=4)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    return root


def test_make_equals_the_labels_and_writes_base_only_labels(data, tmp_path):
    out = tmp_path / "tags.json"
    assert main(["make", "--labels", f"{data}/full", "--classes", f"{data}/classes.txt", "--novel", *NOVEL, "--output", str(out), "--base-only-labels", str(tmp_path / "base")]) == 0
    assert json.load(open(out)) == json.load(open(f"{data}/tags.json"))  # the fixture's own tags
    for name in sorted(os.listdir(f"{data}/base_only")):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "base" / name)), np.asarray(Image.open(f"{data}/base_only/{name}")))


def test_check_reports_problems(data, tmp_path, capsys):
    assert main(["check", f"{data}/tags.json", "--classes", f"{data}/classes.txt", "--novel", *NOVEL, "--images", f"{data}/images"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"000": ["girafe"], "001": ["car"], "999": []}))
    assert main(["check", str(bad), "--classes", f"{data}/classes.txt", "--novel", *NOVEL, "--images", f"{data}/images"]) == 1
    out = capsys.readouterr().out
    assert "unknown class 'girafe' tagged on 1 image(s) (did you mean 'giraffe'" in out
    assert "'car' is a base class" in out and "1 tagged image(s) are not in the image folder" in out and "never tagged" in out
    report = check_tags({"a": ["giraffe"], "b": []}, CLASSES, [2, 3])
    assert report["tags_per_class"] == {"giraffe": 1, "zebra": 0} and report["images_without_tags"] == ["b"]


def test_audit_scores_by_hand():
    fractions = np.array([[0.30, 0.00], [0.0, 0.0], [0.005, 0.5]])
    tagged = np.array([[True, False], [True, False], [False, False]])
    scores = audit_scores(fractions, tagged, 0.01)
    # image 0 agrees; image 1: tagged giraffe never predicted (1.0); image 2: zebra predicted untagged (0.49 / 0.99)
    assert scores == pytest.approx([0.0, 1.0, 0.49 / 0.99])


def test_audit_writes_a_ranked_report(data, tmp_path):
    name = "tags_audit_ws"
    if name not in DatasetCatalog.list():
        register_real_weakshot(name, f"{data}/images", f"{data}/base_only", CLASSES, f"{data}/tags.json")
    cfg = build_cfg(BASE_CONFIG, TINY + ["INPUT.MIN_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("w")
    out = tmp_path / "audit"
    assert main(["audit", "--config-file", BASE_CONFIG, "--weights", str(tmp_path / "w.pth"), "--dataset", name, "--output", str(out), "--top", "2", "--opts", *TINY, "INPUT.MIN_SIZE_TEST", "64"]) == 0
    report = json.load(open(out / "audit.json"))
    rows = report["images"]
    assert len(rows) == 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    assert (out / "audit.csv").is_file() and all(os.path.isfile(r["overlay"]) for r in rows[:2] if r["score"] > 0)
    assert MetadataCatalog.get(name).novel_class_ids == [2, 3]
