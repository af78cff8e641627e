"""Bad inputs: each gives an error naming the file or key and what was expected (issue #9, Reliability).

Decided behaviours (not errors): grayscale and RGBA images are read as RGB (gray replicated, transparency
composited over white, the same on every path: training, evaluation, pseudo-labels, prediction); 16-bit grayscale images are reduced to 8 bits by their high byte (as Pillow does for 16-bit
RGB PNGs); 16-bit label PNGs with ids > 255 are fine when the ids are valid; weights for another number
of classes are skipped with one warning listing the tensors when training starts from MODEL.WEIGHTS
(fine-tuning on another label set), and are an error when resuming or with --eval-only.
"""
import json
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from simformer.data.dataset_mappers.sem_seg_mapper import SemSegDatasetMapper, SemSegTestMapper, read_label_map
from simformer.data.datasets.folder import register_sem_seg_folder
from simformer.data.datasets.weakshot import register_real_weakshot, register_simulated_weakshot
from simformer.data.image_io import ImageReadError
from simformer.engine.checkpoint import AtomicCheckpointer, ShapeMismatchError
from simformer.evaluation import SemSegEvaluator
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
CLASSES = ["a", "b", "c"]
TINY_MODEL = tiny_model(queries=5) + ["INPUT.MIN_SIZE_TEST", "16", "TEST.NUM_VIS_OVERLAYS", "0", "DATALOADER.NUM_WORKERS", "0"]


# ------------------------------------------------------------------------------------------------ helpers
def _label(h=16, w=16):
    label = np.zeros((h, w), np.uint8)
    label[:, w // 2 :] = 1
    label[2:6, 2:6] = 2
    return label


def _image(h=16, w=16):
    return np.random.RandomState(0).randint(0, 255, (h, w, 3)).astype(np.uint8)


def _save(path, array, **kwargs):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(array, **kwargs).save(str(path))
    return str(path)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _mapper(num_classes=3, ignore_label=255):
    return SemSegDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=num_classes, ignore_label=ignore_label)


def _record(image, label):
    return {"file_name": str(image), "sem_seg_file_name": str(label)}


@pytest.fixture
def pair(tmp_path):
    """A valid image / label pair."""
    return _save(tmp_path / "img" / "x.png", _image()), _save(tmp_path / "lab" / "x.png", _label())


@pytest.fixture
def names():
    made = []

    def new():
        made.append(f"test_bad_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for n in made:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if n in catalog.list():
                catalog.remove(n)


# ------------------------------------------------------------------------------------------------ files
def test_missing_image(pair, tmp_path):
    missing = str(tmp_path / "img" / "nope.png")
    with pytest.raises(FileNotFoundError, match=r"image file '.*nope\.png' does not exist"):
        _mapper()(_record(missing, pair[1]))
    with pytest.raises(FileNotFoundError, match=r"label file '.*nope\.png' does not exist"):
        _mapper()(_record(pair[0], str(tmp_path / "lab" / "nope.png")))


def test_image_without_label_in_folder(tmp_path, names):
    _save(tmp_path / "img" / "x.png", _image())
    _save(tmp_path / "img" / "y.png", _image())
    _save(tmp_path / "lab" / "x.png", _label())
    name = names()
    register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES)
    with pytest.raises(FileNotFoundError, match=r"1 of 2 images .* have no label file '<stem>\.png' .*'y\.png'"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_image(pair, tmp_path, ext):
    path = _truncate(_save(tmp_path / "img" / f"t{ext}", _image(64, 64)))
    with pytest.raises(ImageReadError, match=rf"image file '.*t\{ext}' cannot be decoded .*expected a complete image file"):
        _mapper()(_record(path, pair[1]))


def test_truncated_label(pair, tmp_path):
    path = _truncate(_save(tmp_path / "lab" / "t.png", np.random.RandomState(1).randint(0, 3, (64, 64)).astype(np.uint8)))
    with pytest.raises(ImageReadError, match=r"label file '.*t\.png' cannot be decoded"):
        _mapper()(_record(_save(tmp_path / "img" / "t.png", _image(64, 64)), path))


def test_not_an_image_file(tmp_path, names):
    _save(tmp_path / "lab" / "x.png", _label())
    os.makedirs(tmp_path / "img")
    (tmp_path / "img" / "x.png").write_bytes(b"this is not a PNG")
    with pytest.raises(ImageReadError, match=r"image file '.*x\.png' cannot be decoded"):
        _mapper()(_record(tmp_path / "img" / "x.png", tmp_path / "lab" / "x.png"))
    name = names()
    register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES)
    with pytest.raises(OSError, match=r"cannot identify image file '.*x\.png'"):  # the loader reads the header
        DatasetCatalog.get(name)


def test_invalid_label_ids(pair, tmp_path):
    bad = _label()
    bad[0, 0], bad[1, 1] = 7, 200
    path = _save(tmp_path / "lab" / "bad.png", bad)
    with pytest.raises(ValueError, match=r"bad\.png: label ids \[7, 200\] are neither a class id in \[0, 3\) nor the ignore value 255"):
        _mapper()(_record(pair[0], path))


def test_label_with_three_channels(pair, tmp_path):
    path = _save(tmp_path / "lab" / "rgb.png", np.stack([_label()] * 3, -1))
    with pytest.raises(ValueError, match=r"rgb\.png: expected a single-channel label PNG"):
        _mapper()(_record(pair[0], path))


def test_image_and_label_sizes_differ(tmp_path, names):
    image = _save(tmp_path / "img" / "x.png", _image(16, 20))
    label = _save(tmp_path / "lab" / "x.png", _label(16, 16))
    with pytest.raises(ValueError, match=r"x\.png: label size \(16, 16\) differs from image .*x\.png size \(16, 20\)"):
        _mapper()(_record(image, label))
    name = names()
    register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES)
    with pytest.raises(ValueError, match=r"label '.*x\.png' is 16x16 \(WxH\) but image '.*x\.png' is 20x16"):
        DatasetCatalog.get(name)


def test_record_size_differs_from_image(pair):
    record = dict(_record(*pair), height=10, width=16)
    with pytest.raises(Exception, match=r"Mismatched image shape for image .*x\.png"):
        _mapper()(record)


def test_grayscale_and_rgba_images_are_read_as_rgb(pair, tmp_path):
    rgb = _image()
    gray = _save(tmp_path / "img" / "gray.png", rgb[..., 0])
    rgba = _save(tmp_path / "img" / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))  # opaque
    out = _mapper()(_record(gray, pair[1]))["image"]
    assert out.shape == (3, 16, 16) and all(torch.equal(out[c], torch.from_numpy(rgb[..., 0])) for c in range(3))
    out = _mapper()(_record(rgba, pair[1]))["image"]
    assert torch.equal(out, torch.from_numpy(rgb).permute(2, 0, 1))
    test_out = SemSegTestMapper(_cfg([]))({"file_name": gray})["image"]  # the inference mapper reads the same way
    assert test_out.shape == (3, 16, 16) and torch.equal(test_out[2], torch.from_numpy(rgb[..., 0]))


def _transparent_images(d):
    """RGBA, LA and palette-with-transparency files with fully and half transparent pixels."""
    rgb = _image()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :4], alpha[:, 4:8] = 0, 128
    paths = {"rgba": _save(d / "rgba.png", np.dstack([rgb, alpha])), "la": _save(d / "la.png", np.dstack([rgb[..., 0], alpha]), mode="LA")}
    index = (rgb[..., 0] % 15 + 1).astype(np.uint8)
    index[:, :4] = 0  # the transparent palette entry
    pal = Image.fromarray(index, mode="P")
    pal.putpalette(np.random.RandomState(1).randint(0, 255, 16 * 3).astype(np.uint8).tolist())
    pal.save(str(d / "pal.png"), transparency=0)
    paths["palette"] = str(d / "pal.png")
    return paths


def test_transparent_images_give_the_same_pixels_on_every_path(pair, tmp_path):
    """One reader, one rule (transparency over white) for training, evaluation / pseudo-labels (the test
    mapper) and simformer-predict; it used to drop alpha in training and composite in prediction."""
    from simformer.data.image_io import read_image_file
    from simformer.tools.predict import load_image

    for kind, path in _transparent_images(tmp_path / "img").items():
        train = _mapper()(_record(path, pair[1]))["image"].permute(1, 2, 0).numpy()
        test = SemSegTestMapper(_cfg([]))({"file_name": path})["image"].permute(1, 2, 0).numpy()
        predict, info = load_image(path)
        assert np.array_equal(train, test) and np.array_equal(train, predict), kind
        assert (predict[:, :4] == 255).all(), kind  # fully transparent = white
        rgba = np.asarray(Image.open(path).convert("RGBA")).astype(np.float64)
        expected = rgba[..., :3] * rgba[..., 3:] / 255 + 255 * (1 - rgba[..., 3:] / 255)
        assert np.abs(predict.astype(np.float64) - expected).max() <= 1, kind
        assert np.array_equal(read_image_file(path, "RGB"), predict)


def test_16bit_grayscale_image_is_reduced_to_8bit(pair, tmp_path):
    value = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)  # full 16-bit range
    path = _save(tmp_path / "img" / "g16.png", value)
    assert Image.open(path).mode in ("I", "I;16")
    out = _mapper()(_record(path, pair[1]))["image"]
    assert out.dtype == torch.uint8 and torch.equal(out[0], torch.from_numpy((value >> 8).astype(np.uint8)))


def test_float_image_is_rejected(pair, tmp_path):
    path = str(tmp_path / "img" / "f.tif")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.zeros((16, 16), np.float32), mode="F").save(path)
    with pytest.raises(ImageReadError, match=r"image file '.*f\.tif' has mode 'F' .*expected an 8- or 16-bit"):
        _mapper()(_record(path, pair[1]))


def test_16bit_label_with_ids_above_255(tmp_path):
    label = np.zeros((16, 16), np.uint16)
    label[:, 8:] = 299
    label[0, 0] = 1000
    path = _save(tmp_path / "lab" / "l16.png", label)
    out = read_label_map(path, num_classes=300, ignore_label=1000)
    assert out.dtype == np.int64 and set(np.unique(out)) == {0, 299, 1000}
    image = _save(tmp_path / "img" / "l16.png", _image())
    result = _mapper(num_classes=300, ignore_label=1000)(_record(image, path))
    assert sorted(result["instances"].gt_classes.tolist()) == [0, 299]
    label[1, 1] = 400
    _save(path, label)
    with pytest.raises(ValueError, match=r"l16\.png: label ids \[400\] are neither a class id in \[0, 300\)"):
        read_label_map(path, num_classes=300, ignore_label=1000)


def test_evaluator_names_bad_ground_truth(tmp_path, names):
    name = names()
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255)
    evaluator = SemSegEvaluator(name, distributed=False)
    bad = _label()
    bad[0, 0] = 9
    with pytest.raises(ValueError, match=r"bad\.png: gt values must be in \[0, 3\) or ignore_label=255; found \[9\]"):
        evaluator.process([{"sem_seg_file_name": _save(tmp_path / "gt" / "bad.png", bad)}], [{"sem_seg": torch.zeros(3, 16, 16)}])
    truncated = _truncate(_save(tmp_path / "gt" / "t.png", np.random.RandomState(0).randint(0, 3, (64, 64)).astype(np.uint8)))
    with pytest.raises(OSError, match=r"ground-truth label file '.*t\.png' cannot be decoded"):
        evaluator.process([{"sem_seg_file_name": truncated}], [{"sem_seg": torch.zeros(3, 64, 64)}])
    with pytest.raises(FileNotFoundError, match=r"ground-truth label file '.*none\.png' does not exist"):
        evaluator.process([{"sem_seg_file_name": str(tmp_path / "gt" / "none.png")}], [{"sem_seg": torch.zeros(3, 16, 16)}])


# ------------------------------------------------------------------------------------------------ datasets
def test_empty_folder(tmp_path, names):
    os.makedirs(tmp_path / "img")
    os.makedirs(tmp_path / "lab")
    name = names()
    register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES)
    with pytest.raises(FileNotFoundError, match=rf"dataset '{name}': no images with extension .* found in image_root"):
        DatasetCatalog.get(name)


def test_empty_dataset_in_training_loader(names):
    from simformer.data.train_loader import build_resumable_train_loader

    name = names()
    DatasetCatalog.register(name, lambda: [])
    cfg = _cfg(["DATASETS.TRAIN", f"('{name}',)"])
    with pytest.raises(ValueError, match=rf"DATASETS.TRAIN: dataset '{name}' is empty .*expected at least one image"):
        build_resumable_train_loader(cfg, mapper=lambda d: d)


def test_unknown_dataset_name(pair, names):
    from simformer.engine import Trainer

    name = names()
    register_sem_seg_folder(name, os.path.dirname(pair[0]), os.path.dirname(pair[1]), CLASSES)
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    cfg = _cfg(["DATASETS.TRAIN", f"('{typo}',)"])
    with pytest.raises(KeyError, match=rf"DATASETS.TRAIN: dataset '{typo}' is not registered. Did you mean '{name}'"):
        Trainer.build_train_loader(cfg)
    with pytest.raises(KeyError, match=rf"DATASETS.TEST: dataset '{typo}' is not registered"):
        Trainer.build_test_loader(cfg, typo)


def test_tags_file_with_unknown_class_and_unknown_image(tmp_path, names):
    _save(tmp_path / "img" / "x.png", _image())
    _save(tmp_path / "lab" / "x.png", np.where(_label() == 2, 255, _label()).astype(np.uint8))
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"x": ["cc"]}))
    with pytest.raises(ValueError, match=r"tags file '.*tags\.json', image 'x': unknown class name 'cc'; did you mean 'c'"):
        register_real_weakshot(names(), str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES, str(tags))
    tags.write_text(json.dumps({"x": ["c"], "ghost": ["c"]}))
    name = names()
    register_real_weakshot(name, str(tmp_path / "img"), str(tmp_path / "lab"), CLASSES, str(tags))
    with pytest.raises(ValueError, match=r"tags file '.*tags\.json' has tags for 1 image\(s\) that are not in image_root '.*img': 'ghost'"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize(
    "novel, match",
    [
        ([2, 7], r"novel_classes: class id 7 is out of range \[0, 3\)"),
        (["c", "bb"], r"novel_classes: unknown class name 'bb'; did you mean 'b'"),
        ([-1], r"novel_classes: class id -1 is out of range"),
    ],
)
def test_novel_list_with_unknown_ids(pair, names, novel, match):
    with pytest.raises(ValueError, match=match):
        register_simulated_weakshot(names(), os.path.dirname(pair[0]), os.path.dirname(pair[1]), CLASSES, novel)


# ------------------------------------------------------------------------------------------------ config
def _args(*opts, config=BASE_CONFIG, extra=()):
    return default_argument_parser().parse_args(["--config-file", config, *extra, *opts])


def _cfg(opts):
    from detectron2.config import get_cfg

    from simformer import add_simformer_config
    from simformer.utils.config_merge import merge_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    return merge_config(cfg, BASE_CONFIG, TINY_MODEL + list(opts))


def test_misspelled_key_on_the_command_line():
    import train_net

    with pytest.raises(KeyError, match=r"command-line options: unknown config key 'SOLVER.BASE_LRR'; did you mean 'SOLVER.BASE_LR'"):
        train_net.setup(_args("SOLVER.BASE_LRR", "0.1"))
    with pytest.raises(ValueError, match=r"KEY VALUE pairs; got an odd number"):
        train_net.setup(_args("SOLVER.BASE_LR"))


def test_misspelled_key_in_a_config_file(tmp_path):
    import train_net

    path = tmp_path / "typo.yaml"
    path.write_text(f"_BASE_: {BASE_CONFIG}\nMODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSESS: 5\n")
    with pytest.raises(KeyError, match=r"config file '.*typo\.yaml' .*unknown config key 'MODEL.SEM_SEG_HEAD.NUM_CLASSESS'; did you mean 'MODEL.SEM_SEG_HEAD.NUM_CLASSES'"):
        train_net.setup(_args(config=str(path)))


def test_wrong_value_type_names_the_key():
    import train_net

    with pytest.raises(ValueError, match=r"for config key: SOLVER.BASE_LR"):
        train_net.setup(_args("SOLVER.BASE_LR", "fast"))


# ------------------------------------------------------------------------------------------------ weights
@pytest.fixture(scope="module")
def models():
    """Tiny MaskFormer models with 3 and 4 classes (built once)."""
    from simformer.engine import Trainer

    return {k: Trainer.build_model(_cfg(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(k)])) for k in (3, 4)}


def test_missing_weights_file(models, tmp_path):
    ckpt = AtomicCheckpointer(models[3], str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS: checkpoint file '.*nope\.pth' does not exist"):
        ckpt.resume_or_load(str(tmp_path / "nope.pth"), resume=False)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(FileNotFoundError, match=r"last_checkpoint' names checkpoint '.*model_0000009\.pth', which does not exist"):
        ckpt.resume_or_load("", resume=True)


def test_truncated_weights_file(models, tmp_path):
    AtomicCheckpointer(models[3], str(tmp_path)).save("model_final")
    path = _truncate(str(tmp_path / "model_final.pth"))
    with pytest.raises(ValueError, match=r"checkpoint file '.*model_final\.pth' cannot be read .*truncated"):
        AtomicCheckpointer(models[3], str(tmp_path)).resume_or_load(path, resume=False)


def test_weights_for_another_number_of_classes(models, tmp_path, caplog):
    AtomicCheckpointer(models[3], str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    # resuming / evaluating: an error listing the tensors
    with pytest.raises(ShapeMismatchError, match=r"(?s)does not fit the model .*NUM_CLASSES.*class_embed\.weight: \(4, 32\) in the checkpoint, \(5, 32\) in the model"):
        AtomicCheckpointer(models[4], str(tmp_path), strict_shapes=True).resume_or_load(path, resume=False)
    # fine-tuning from MODEL.WEIGHTS: one warning listing the skipped tensors, the rest is loaded
    caplog.set_level(logging.WARNING)
    AtomicCheckpointer(models[4], str(tmp_path)).resume_or_load(path, resume=False)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "class_embed.weight: (4, 32) in the checkpoint, (5, 32) in the model" in warnings[0]
    assert torch.equal(models[4].backbone.stem.conv1.weight, models[3].backbone.stem.conv1.weight)


def test_eval_only_errors(models, pair, tmp_path, names):
    import train_net

    out = str(tmp_path / "out")
    AtomicCheckpointer(models[3], out).save("model_final")
    name = names()
    register_sem_seg_folder(name, os.path.dirname(pair[0]), os.path.dirname(pair[1]), CLASSES + ["d"])
    common = [*TINY_MODEL, "DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", out, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"]
    with pytest.raises(ValueError, match=r"--eval-only needs weights: set MODEL.WEIGHTS"):
        train_net.main(_args(*common, "MODEL.WEIGHTS", "", extra=["--eval-only"]))
    with pytest.raises(ShapeMismatchError, match=r"class_embed\.weight"):
        train_net.main(_args(*common, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), extra=["--eval-only"]))
