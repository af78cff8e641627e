"""simformer-predict on generated images of several sizes and modes, one of them corrupt."""
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
from simformer.tools.predict import Predictor, build_cfg, expand_inputs, load_image, main, upsample_argmax
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
# the synthetic_val metadata (12 classes, registered on import) names the classes
TINY = tiny_model(queries=6) + [
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "256",
]  # fmt: skip


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny randomly initialised model, saved as a checkpoint."""
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(build_cfg(CONFIG, TINY))
    DetectionCheckpointer(model, save_dir=str(out)).save("model_tiny")
    return str(out / "model_tiny.pth")


def _pattern(h, w, seed=0):
    rng = np.random.RandomState(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 60, 40)
    img[h // 2 :, : w // 2] = (30, 160, 70)
    return np.clip(img.astype(int) + rng.randint(0, 40, img.shape), 0, 255).astype(np.uint8)


def _write_images(d):
    """name -> (W, H) the label must have (the image as displayed)."""
    os.makedirs(d, exist_ok=True)
    sizes = {}
    Image.fromarray(_pattern(64, 64)).save(f"{d}/rgb.png"); sizes["rgb"] = (64, 64)
    Image.fromarray(_pattern(50, 70)).convert("L").save(f"{d}/gray.png"); sizes["gray"] = (70, 50)
    rgba = np.dstack([_pattern(40, 40), np.full((40, 40), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(f"{d}/rgba.png"); sizes["rgba"] = (40, 40)
    stored = Image.fromarray(_pattern(20, 30))  # stored W=30, H=20; EXIF orientation 6 = rotate 90 for display
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(f"{d}/exif.jpg", exif=exif, quality=95); sizes["exif"] = (20, 30)
    Image.fromarray(_pattern(37, 123)).save(f"{d}/odd.png"); sizes["odd"] = (123, 37)
    Image.fromarray((np.arange(33 * 17).reshape(33, 17) * 100).astype(np.uint16)).save(f"{d}/gray16.png"); sizes["gray16"] = (17, 33)
    Image.fromarray(_pattern(1, 90)).save(f"{d}/strip.bmp"); sizes["strip"] = (90, 1)
    with open(f"{d}/corrupt.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return sizes


def test_predict_command(tmp_path, weights, capsys):
    sizes = _write_images(str(tmp_path / "in"))
    os.makedirs(tmp_path / "gt")
    gt = np.zeros((64, 64), np.uint8)
    gt[32:] = 1
    gt[:4] = 255
    Image.fromarray(gt).save(tmp_path / "gt" / "rgb.png")
    out = str(tmp_path / "out")
    rc = main(["--config-file", CONFIG, "--weights", weights, "--input", str(tmp_path / "in"), "--output", out,
               "--gt", str(tmp_path / "gt"), "--batch-size", "3", "--device", "cpu", "--quiet", "--opts", *TINY])
    captured = capsys.readouterr()
    assert rc == 1  # one file failed, the others were done
    assert "corrupt.png" in captured.err and "Failed (1)" in captured.out
    assert f"Predicted {len(sizes)} of {len(sizes) + 1} images" in captured.out

    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["done"] == len(sizes) and summary["failed"] == 1
    errors = {os.path.basename(r["input"]): r["error"] for r in summary["images"] if "error" in r}
    assert list(errors) == ["corrupt.png"] and "corrupt" in errors["corrupt.png"]
    for name, (w, h) in sizes.items():
        label = np.asarray(Image.open(os.path.join(out, f"{name}_label.png")))
        assert label.shape == (h, w), name
        assert label.dtype == np.uint8 and label.max() < 12
        overlay = Image.open(os.path.join(out, f"{name}_overlay.png"))
        assert overlay.mode == "RGB" and overlay.size[0] >= 2 * min(w, 128)  # [image | prediction] + legend
    assert os.path.exists(os.path.join(out, "rgb_vs_gt.png"))
    assert not os.path.exists(os.path.join(out, "gray_vs_gt.png"))
    rgb = next(r for r in summary["images"] if r["input"].endswith("rgb.png"))
    assert 0 <= rgb["pixel_accuracy"] <= 100 and rgb["gt"].endswith("rgb.png")
    exif = next(r for r in summary["images"] if r["input"].endswith("exif.jpg"))
    assert exif["exif_rotated"] and exif["size"] == [30, 20]


def test_modes_and_exif(tmp_path):
    d = str(tmp_path)
    _write_images(d)
    img, info = load_image(f"{d}/rgba.png")
    assert img.shape == (40, 40, 3) and info["mode"] == "RGBA"
    assert (img[:, :10] == 255).all()  # transparent pixels composited over white
    img, _ = load_image(f"{d}/gray16.png")
    assert img.shape == (33, 17, 3) and img.dtype == np.uint8 and img.max() > 200  # 16-bit scaled, not clipped
    img, info = load_image(f"{d}/exif.jpg")
    assert img.shape == (30, 20, 3) and info["exif_rotated"]
    # orientation 6 turns the stored top (red half) to the right side
    assert img[:, 15:, 0].mean() > img[:, :5, 0].mean() + 50
    with pytest.raises(Exception):
        load_image(f"{d}/corrupt.png")


def test_batches_give_the_same_labels(weights):
    """Only same-size inputs share a forward pass, so labels do not depend on the batch size."""
    predictor = Predictor(build_cfg(CONFIG, TINY), weights, "cpu")
    assert predictor.missing_keys == []
    images = [_pattern(64, 64, 1), _pattern(48, 80, 2), _pattern(64, 64, 3), _pattern(10, 200, 4)]
    together = predictor(images)
    for image, label in zip(images, together):
        np.testing.assert_array_equal(predictor([image])[0], label)
        assert label.shape == image.shape[:2]


def test_upsample_argmax_in_chunks():
    scores = torch.randn(7, 9, 11)
    full = torch.nn.functional.interpolate(scores[None], size=(40, 30), mode="bilinear", align_corners=False)[0].argmax(0)
    torch.testing.assert_close(upsample_argmax(scores, 40, 30, max_elements=2 * 40 * 30), full)


def test_expand_inputs(tmp_path):
    d = tmp_path / "imgs"
    os.makedirs(d / "sub")
    for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.png"):
        (d / name).write_bytes(b"x")
    paths, errors = expand_inputs([str(d), str(d / "b.png"), str(tmp_path / "nothing_*.png")])
    assert [os.path.basename(p) for p in paths] == ["a.JPG", "b.png"] and errors[0][1] == "pattern matches no image file"
    paths, _ = expand_inputs([str(d)], recursive=True)
    assert [os.path.relpath(p, d) for p in paths] == ["a.JPG", "b.png", os.path.join("sub", "c.png")]
    paths, _ = expand_inputs([str(d / "**" / "*.png")])
    assert sorted(os.path.basename(p) for p in paths) == ["b.png", "c.png"]


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "simformer.tools.predict", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and "--config-file" in r.stdout


def test_predict_command_with_tta(tmp_path, weights):
    """--tta runs the config's TEST.AUG scales and flips; labels keep the input size."""
    from simformer.modeling.test_time_augmentation import SemanticSegmentorWithTTA

    d = tmp_path / "in"
    os.makedirs(d)
    Image.fromarray(_pattern(40, 56, 1)).save(d / "a.png")
    out = str(tmp_path / "out")
    rc = main(["--config-file", CONFIG, "--weights", weights, "--input", str(d), "--output", out, "--tta", "--device", "cpu",
               "--quiet", "--no-overlay", "--opts", *TINY, "TEST.AUG.MIN_SIZES", "(48, 64)", "TEST.AUG.MAX_SIZE", "200"])  # fmt: skip
    assert rc == 0
    assert np.asarray(Image.open(os.path.join(out, "a_label.png"))).shape == (40, 56)
    predictor = Predictor(build_cfg(CONFIG, TINY + ["TEST.AUG.ENABLED", "True"]), weights, "cpu")
    assert isinstance(predictor.runner, SemanticSegmentorWithTTA) and predictor.runner.flip
