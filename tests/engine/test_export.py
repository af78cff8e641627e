"""simformer-export: exported models give PyTorch's scores; the ONNX predictor (no detectron2, no torch)
gives the PyTorch predictor's labels."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from simformer.deploy.onnx_predictor import OnnxPredictor, resize_bilinear, resize_shortest_edge_shape
from simformer.engine.export import ScoreMapModel, export_model, load_exported, size_divisibility
from simformer.engine.predictor import Predictor
from simformer.tools.predict import build_cfg
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_TEST = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "MODEL.DEVICE", "cpu"]
MODELS = {
    # MaskFormer with the masked-attention decoder, its "maskformer" semantic map
    "mask2former": ("configs/synthetic/mask2former_R18_fully_supervised.yaml", []),
    # SimFormer with the SSA pixel layer, the fused map
    "simformer_ssa_fusion": ("configs/synthetic/simformer/seg_ssa.yaml", ["MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP", "fusion"]),
    # per-pixel model (detectron2's SemanticSegmentor) with the CCS classifier
    "per_pixel_ccs": ("configs/synthetic/per_pixel_R18_fully_supervised.yaml", ["MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME", "CCSClassifier"]),
}


def _cfg(name):
    config, opts = MODELS[name]
    return build_cfg(os.path.join(REPO, config), tiny_model() + SMALL_TEST + opts)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("export_weights")
    paths = {}
    for name in MODELS:
        torch.manual_seed(1)
        model = build_model(_cfg(name))
        DetectionCheckpointer(model, save_dir=str(out)).save(name)
        paths[name] = str(out / f"{name}.pth")
    return paths


def _reference(cfg, weights):
    return ScoreMapModel(Predictor(cfg, weights, device="cpu").model)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_dynamic_equals_pytorch_at_other_sizes(name, checkpoints, tmp_path):
    cfg = _cfg(name)
    out = str(tmp_path / "m.onnx")
    result = export_model(cfg, checkpoints[name], "onnx", out, 64, 64, dynamic=True)
    assert result["max_abs_diff"] < 1e-4
    ref = _reference(cfg, checkpoints[name])
    div = size_divisibility(ref.model)
    run = load_exported(out, "onnx")
    m = max(div, 32)  # per-pixel: no padding (div 1); test sizes of a real image
    for shape in [(3, 3, 2 * m, 3 * m), (1, 3, 4 * m + div, m)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            want = ref(x)
        got = run(x)
        assert got.shape == tuple(want.shape) and got.shape[1] == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4 * float(want.abs().max()), rtol=0)
    meta = json.load(open(out + ".json"))
    assert meta["input_shape"] == [None, 3, None, None] and meta["size_divisibility"] == div
    assert meta["num_classes"] == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES and len(meta["class_names"]) == meta["num_classes"]


@pytest.mark.parametrize("fmt, dynamic", [("onnx", False), ("torchscript", True), ("exported-program", False)])
def test_formats_fixed_and_dynamic(fmt, dynamic, checkpoints, tmp_path):
    cfg = _cfg("mask2former")
    out = str(tmp_path / ("m.pt2" if fmt == "exported-program" else f"m.{fmt}"))
    result = export_model(cfg, checkpoints["mask2former"], fmt, out, 60, 90, dynamic=dynamic, batch=2)
    assert result["max_abs_diff"] <= 1e-4 * result["checks"][0]["score_range"]
    assert os.path.isfile(out) and not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # renamed, no partial file
    meta = json.load(open(out + ".json"))
    if not dynamic:  # rounded up to the size divisibility (32)
        assert result["input_shape"] == [2, 3, 64, 96] and meta["input_shape"] == [2, 3, 64, 96]


def test_export_errors(checkpoints, tmp_path):
    cfg = _cfg("mask2former")
    with pytest.raises(ValueError, match=r"\.pt2"):
        export_model(cfg, checkpoints["mask2former"], "exported-program", str(tmp_path / "m.ep"))
    with pytest.raises(ValueError, match="--format"):
        export_model(cfg, checkpoints["mask2former"], "tflite", str(tmp_path / "m.x"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        export_model(cfg, str(tmp_path / "missing.pth"), "onnx", str(tmp_path / "m.onnx"))


def _images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 256, (h, w, 3)).astype(np.uint8) for h, w in [(64, 64), (50, 90), (130, 70), (64, 64)]]


@pytest.mark.parametrize("name", ["mask2former", "per_pixel_ccs"])
def test_onnx_predictor_equals_pytorch_predictor(name, checkpoints, tmp_path):
    cfg = _cfg(name)
    out = str(tmp_path / "m.onnx")
    export_model(cfg, checkpoints[name], "onnx", out, 64, 64, dynamic=True)
    torch_pred = Predictor(cfg, checkpoints[name], device="cpu")
    onnx_pred = OnnxPredictor(out)
    images = _images()
    for want, got in zip(torch_pred.scores(images), onnx_pred.scores(images)):
        want, got = want["sem_seg"].numpy(), got["sem_seg"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
    for want, got in zip(torch_pred(images), onnx_pred(images)):
        assert got.shape == want.shape and (got == want).mean() > 0.999


def test_resize_helpers_equal_torch_and_detectron2():
    from detectron2.data import transforms as T
    from torch.nn import functional as F

    for h, w in [(50, 90), (130, 70), (1, 300), (64, 64)]:
        t = T.ResizeShortestEdge(64, 128).get_transform(np.zeros((h, w, 3), np.uint8))
        assert resize_shortest_edge_shape(h, w, 64, 128) == (max(1, t.new_h), max(1, t.new_w))
    x = np.random.RandomState(1).rand(3, 7, 11).astype(np.float32)
    for size in [(7, 11), (14, 5), (3, 30), (1, 1)]:
        want = F.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
        np.testing.assert_allclose(resize_bilinear(x, *size), want, atol=1e-6)


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("detectron2", "fvcore", "iopath", "torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
from simformer.tools.predict import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("detectron2", "torch")]
sys.exit(code)
"""


def test_predict_onnx_runs_without_detectron2_and_torch(checkpoints, tmp_path):
    cfg = _cfg("mask2former")
    model = str(tmp_path / "m.onnx")
    export_model(cfg, checkpoints["mask2former"], "onnx", model, 64, 64, dynamic=True)
    images = tmp_path / "images"
    images.mkdir()
    arrays = _images()
    for i, im in enumerate(arrays):
        Image.fromarray(im).save(images / f"im{i}.png")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "-c", BLOCK, "--onnx", model, "--input", str(images), "--output", str(out), "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["done"] == 4 and summary["device"] == "onnxruntime"
    want = Predictor(cfg, checkpoints["mask2former"], device="cpu")(arrays)
    for i, w in enumerate(want):
        got = np.asarray(Image.open(out / f"im{i}_label.png"))
        assert got.shape == w.shape and (got == w).mean() > 0.999
    assert (out / "im0_overlay.png").is_file()
    # wrong combinations and missing metadata are refused with the reason
    bad = subprocess.run([sys.executable, "-m", "simformer.tools.predict", "--onnx", model, "--config-file", "x.yaml", "-i", str(images), "-o", str(out)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "do not apply" in bad.stderr
    os.remove(model + ".json")
    missing = subprocess.run([sys.executable, "-c", BLOCK, "--onnx", model, "-i", str(images), "-o", str(out)], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "m.onnx.json not found" in missing.stderr


def test_image_reader_equals_detectron2_helpers(tmp_path):
    from detectron2.data import detection_utils as d2

    from simformer.data.image_io import apply_exif_orientation, pil_to_numpy

    rng = np.random.RandomState(0)
    for orientation in range(0, 9):
        im = Image.fromarray(rng.randint(0, 255, (5, 7, 3), dtype=np.uint8))
        exif = im.getexif()
        if orientation:
            exif[0x0112] = orientation
        im.save(tmp_path / "e.jpg", exif=exif.tobytes())
        im = Image.open(tmp_path / "e.jpg")
        np.testing.assert_array_equal(np.asarray(apply_exif_orientation(im)), np.asarray(d2._apply_exif_orientation(im)))
    for mode in ["RGB", "L", "P", "CMYK", "RGBA"]:
        im = Image.fromarray(rng.randint(0, 255, (5, 7, 3), dtype=np.uint8)).convert(mode)
        for fmt in ["RGB", "BGR", "L", None]:
            a, b = pil_to_numpy(im, fmt), d2.convert_PIL_to_numpy(im, fmt)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
