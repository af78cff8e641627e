"""Users' label formats, pixel by pixel on small files in the real formats: non-contiguous ids, RGB
palettes, 0/255 masks, COCO instances / panoptic JSON, tags with scores / one-hot / aliases; mismatches
give errors naming the file and the value."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from simformer.data.datasets.coco_json import register_coco_weakshot
from simformer.data.datasets.folder import register_sem_seg_folder
from simformer.data.datasets.weakshot import read_tags_file, register_real_weakshot
from simformer.data.label_formats import LabelMapping, convert_label_folder


def _images(root, stems, h=6, w=8):
    os.makedirs(root, exist_ok=True)
    for s in stems:
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(os.path.join(root, f"{s}.jpg"))


def _fresh(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_non_contiguous_ids_are_mapped_once_and_cached(tmp_path):
    raw = np.array([[7, 7, 21, 0], [21, 40, 40, 0]], np.uint8)
    os.makedirs(tmp_path / "labels")
    Image.fromarray(raw).save(tmp_path / "labels" / "a.png")
    mapping = LabelMapping.from_ids({7: 0, 21: 1, 40: 2, 0: 255}, num_classes=3)
    out = convert_label_folder(str(tmp_path / "labels"), mapping, log=None)
    got = np.asarray(Image.open(os.path.join(out, "a.png")))
    assert got.tolist() == [[0, 0, 1, 255], [1, 2, 2, 255]]
    stamp = os.stat(os.path.join(out, "a.png")).st_mtime_ns
    assert convert_label_folder(str(tmp_path / "labels"), mapping, log=None) == out  # unchanged: not converted again
    assert os.stat(os.path.join(out, "a.png")).st_mtime_ns == stamp
    raw[0, 0] = 9  # an id the map does not know: error with the file and the value
    Image.fromarray(raw).save(tmp_path / "labels" / "b.png")
    with pytest.raises(ValueError, match=r"b\.png: 1 pixels have values not in the ids mapping: value 9 \(1 px\)"):
        convert_label_folder(str(tmp_path / "labels"), mapping, log=None)
    with pytest.raises(ValueError, match="neither a class id"):
        LabelMapping.from_ids({1: 5}, num_classes=3)


def test_palette_pngs_through_folder_registration(tmp_path):
    colors = [(128, 64, 128), (220, 20, 60), (0, 0, 142)]
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = colors[0]
    rgb[:3, 4:] = colors[2]
    rgb[3:, 4:] = (0, 0, 0)  # void colour -> ignore
    os.makedirs(tmp_path / "labels")
    Image.fromarray(rgb).save(tmp_path / "labels" / "x.png")
    _images(str(tmp_path / "images"), ["x"])
    palette = {c: i for i, c in enumerate(colors)}
    palette[(0, 0, 0)] = 255
    _fresh("fmt_palette")
    meta = register_sem_seg_folder("fmt_palette", str(tmp_path / "images"), str(tmp_path / "labels"), ["road", "person", "car"],
                                   label_mapping=LabelMapping.from_palette(palette, 3))  # fmt: skip
    (d,) = DatasetCatalog.get("fmt_palette")
    label = np.asarray(Image.open(d["sem_seg_file_name"]))
    want = np.full((6, 8), 255)
    want[:, :4], want[:3, 4:] = 0, 2
    assert np.array_equal(label, want) and meta.sem_seg_root == os.path.dirname(d["sem_seg_file_name"])
    # registering again with the same arguments is accepted (the conversion closure is not compared)
    register_sem_seg_folder("fmt_palette", str(tmp_path / "images"), str(tmp_path / "labels"), ["road", "person", "car"], label_mapping=LabelMapping.from_palette(palette, 3))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "labels" / "x.png")
    _fresh("fmt_palette")
    register_sem_seg_folder("fmt_palette", str(tmp_path / "images"), str(tmp_path / "labels"), ["road", "person", "car"], label_mapping=LabelMapping.from_palette(palette, 3))
    with pytest.raises(ValueError, match=r"x\.png: 1 pixels .* colour \(1, 2, 3\)"):
        DatasetCatalog.get("fmt_palette")
    with pytest.raises(ValueError, match="for 2 classes"):
        register_sem_seg_folder("fmt_palette2", str(tmp_path / "images"), str(tmp_path / "labels"), ["road", "person", "car"], label_mapping=LabelMapping.from_palette({(0, 0, 0): 0}, 2))


def test_binary_masks(tmp_path):
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 255
    os.makedirs(tmp_path / "masks")
    Image.fromarray(m).save(tmp_path / "masks" / "m.png")
    out = convert_label_folder(str(tmp_path / "masks"), LabelMapping.binary(foreground=1, background=0, num_classes=2), log=None)
    assert np.array_equal(np.asarray(Image.open(os.path.join(out, "m.png"))), (m == 255).astype(np.uint8))
    m[0, 0] = 128  # anti-aliased edge: not a 0/255 mask
    Image.fromarray(m).save(tmp_path / "masks" / "m.png")
    with pytest.raises(ValueError, match="value 128"):
        convert_label_folder(str(tmp_path / "masks"), LabelMapping.binary(1, 0, 2), log=None)
    rgb = np.zeros((4, 5, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "masks" / "m.png")
    with pytest.raises(ValueError, match="from_palette"):
        convert_label_folder(str(tmp_path / "masks"), LabelMapping.binary(1, 0, 2), log=None)


def test_tags_with_scores_one_hot_and_aliases(tmp_path):
    (tmp_path / "scores.json").write_text(json.dumps({"a.jpg": {"giraffe": 0.9, "zebra": 0.3}, "b": ["Zebra"]}))
    assert read_tags_file(str(tmp_path / "scores.json"), threshold=0.5, aliases={"Zebra": "zebra"}) == {"a": ["giraffe"], "b": ["zebra"]}
    (tmp_path / "onehot.csv").write_text("image,giraffe,zebra\na,1,0\nb,0.7,0.8\nc,0,0\n")
    assert read_tags_file(str(tmp_path / "onehot.csv")) == {"a": ["giraffe"], "b": ["giraffe", "zebra"], "c": []}
    assert read_tags_file(str(tmp_path / "onehot.csv"), threshold=0.75) == {"a": ["giraffe"], "b": ["zebra"], "c": []}
    (tmp_path / "scored.csv").write_text("image,classes\na,giraffe:0.2;zebra:0.6\nb,giraffe\n")
    assert read_tags_file(str(tmp_path / "scored.csv")) == {"a": ["zebra"], "b": ["giraffe"]}
    (tmp_path / "bad.csv").write_text("image,giraffe\na,yes\n")
    with pytest.raises(ValueError, match=r"line 2, column 'giraffe': expected a number"):
        read_tags_file(str(tmp_path / "bad.csv"))


def _coco_fixture(tmp_path):
    """Two 10x12 images; categories with non-contiguous ids 3 (grass), 8 (dog), 11 (cat)."""
    images = [{"id": 1, "file_name": "one.jpg", "height": 10, "width": 12}, {"id": 2, "file_name": "two.jpg", "height": 10, "width": 12}]
    cats = [{"id": 11, "name": "cat"}, {"id": 3, "name": "grass"}, {"id": 8, "name": "dog"}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[0, 5, 12, 5, 12, 10, 0, 10]], "iscrowd": 0},  # grass: rows 5-9
        {"id": 2, "image_id": 1, "category_id": 8, "segmentation": [[2, 2, 6, 2, 6, 7, 2, 7]], "iscrowd": 0},  # dog over the grass
        {"id": 3, "image_id": 2, "category_id": 11, "segmentation": {"size": [10, 12], "counts": [30, 20, 70]}, "iscrowd": 1},  # uncompressed RLE
    ]
    _images(str(tmp_path / "images"), ["one", "two"], 10, 12)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def test_coco_instances_real_and_simulated(tmp_path):
    from pycocotools import mask as mask_utils

    path = _coco_fixture(tmp_path)
    _fresh("fmt_coco")
    meta = register_coco_weakshot("fmt_coco", str(tmp_path / "images"), path, ["cat"])
    assert meta.stuff_classes == ["grass", "dog", "cat"] and meta.novel_class_ids == [2] and meta.base_class_ids == [0, 1]
    dicts = {d["image_id"]: d for d in DatasetCatalog.get("fmt_coco")}
    one = np.asarray(Image.open(dicts["one"]["sem_seg_file_name"]))
    grass = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[0, 5, 12, 5, 12, 10, 0, 10]], 10, 12))).astype(bool)
    dog = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[2, 2, 6, 2, 6, 7, 2, 7]], 10, 12))).astype(bool)
    want = np.full((10, 12), 255)
    want[grass], want[dog] = 0, 1  # the smaller dog on top of the grass
    assert np.array_equal(one, want)
    two = np.asarray(Image.open(dicts["two"]["sem_seg_file_name"]))
    assert (two == 255).all() and dicts["two"]["novel_tags"] == [2] and dicts["one"]["novel_tags"] == []  # novel pixels ignored, tagged
    _fresh("fmt_coco_full")
    register_coco_weakshot("fmt_coco_full", str(tmp_path / "images"), path, ["cat"], simulated=True)
    full = {d["image_id"]: d for d in DatasetCatalog.get("fmt_coco_full")}
    cat = mask_utils.decode(mask_utils.frPyObjects({"size": [10, 12], "counts": [30, 20, 70]}, 10, 12)).astype(bool)
    assert np.array_equal(np.asarray(Image.open(full["two"]["sem_seg_file_name"])) == 2, cat) and full["two"]["novel_tags"] == [2]
    with pytest.raises(ValueError, match="unknown class name 'lion'"):
        register_coco_weakshot("fmt_coco_bad", str(tmp_path / "images"), path, ["lion"])


def test_coco_panoptic(tmp_path):
    h, w = 4, 6
    ids = np.zeros((h, w), np.int64)
    ids[:2] = 1000  # sky (stuff)
    ids[2:, :3] = 2 + 256 * 3  # a person (segment id 770)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    os.makedirs(tmp_path / "pan")
    Image.fromarray(rgb).save(tmp_path / "pan" / "p.png")
    _images(str(tmp_path / "images"), ["p"], h, w)
    data = {"images": [{"id": 5, "file_name": "p.jpg", "height": h, "width": w}],
            "annotations": [{"image_id": 5, "file_name": "p.png", "segments_info": [{"id": 1000, "category_id": 187}, {"id": 770, "category_id": 1}]}],
            "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 187, "name": "sky", "isthing": 0}]}  # fmt: skip
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    _fresh("fmt_pan")
    register_coco_weakshot("fmt_pan", str(tmp_path / "images"), str(tmp_path / "panoptic.json"), ["person"], kind="panoptic", panoptic_root=str(tmp_path / "pan"))
    (d,) = DatasetCatalog.get("fmt_pan")
    label = np.asarray(Image.open(d["sem_seg_file_name"]))
    want = np.full((h, w), 255)
    want[:2] = 1  # sky = train id 1 (category 187 after person 1); person is novel -> ignore; unlabelled -> ignore
    assert np.array_equal(label, want) and d["novel_tags"] == [0]


def test_num_classes_must_match_the_dataset():
    from detectron2.config import get_cfg

    from simformer import add_simformer_config
    from simformer.engine.launch import check_datasets_fit_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("synthetic_train",), ("synthetic_val",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 12
    check_datasets_fit_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 10
    with pytest.raises(ValueError, match=r"'synthetic_train' has 12 classes .*NUM_CLASSES is 10"):
        check_datasets_fit_config(cfg)
