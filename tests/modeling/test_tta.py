"""Test-time augmentation (simformer/modeling/test_time_augmentation.py): one scale without flip is plain
inference, flips are undone before averaging, score maps (not labels) are averaged, outputs are at the
original size, and the trainer / predictors switch it on by config."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simformer.modeling.test_time_augmentation import SemanticSegmentorWithTTA, uses_tta
from tests.engine.test_predictor import _cfg


class _Pointwise:
    """A flip-equivariant runner: scores (2, height, width) from the image's mean channel, resized."""

    def __init__(self):
        self.sizes = []

    def __call__(self, inputs):
        out = []
        for x in inputs:
            img = x["image"].float().mean(0)[None, None]
            self.sizes.append(tuple(img.shape[-2:]))
            img = F.interpolate(img, size=(x["height"], x["width"]), mode="bilinear", align_corners=False)[0, 0]
            out.append({"sem_seg": torch.stack([img, -img])})
        return out


def _x(h=32, w=48, height=None, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": height or h, "width": width or w}


def test_one_scale_without_flip_is_plain_inference_of_the_model():
    torch.manual_seed(0)
    model = __import__("detectron2.modeling", fromlist=["build_model"]).build_model(_cfg()).eval()
    x = _x(64, 64, height=80, width=80)  # the mapper resized an 80x80 image to 64x64
    plain = model([x])[0]["sem_seg"]
    tta = SemanticSegmentorWithTTA(model, min_sizes=[64], max_size=1000, flip=False)([x])[0]["sem_seg"]
    assert tta.shape == plain.shape == (3, 80, 80)
    assert torch.equal(tta, plain)


def test_flipped_scores_are_flipped_back():
    runner = _Pointwise()
    x = _x()  # not flip-symmetric
    plain = runner([x])[0]["sem_seg"]
    tta = SemanticSegmentorWithTTA(runner, min_sizes=[32], max_size=1000, flip=True)([x])[0]["sem_seg"]
    assert torch.allclose(tta, plain, atol=1e-5)  # a flip-equivariant runner: flip + unflip = identity
    # the flipped view went through the runner in the same call as the plain one
    assert runner.sizes[-2:] == [(32, 48), (32, 48)]


def test_scales_resize_from_the_original_and_return_the_original_size():
    runner = _Pointwise()
    x = _x(32, 48, height=64, width=96)
    out = SemanticSegmentorWithTTA(runner, min_sizes=[16, 32, 48], max_size=60, flip=False)([x])[0]["sem_seg"]
    assert out.shape == (2, 64, 96)
    assert runner.sizes == [(16, 24), (32, 48), (40, 60)]  # the long side capped at MAX_SIZE


def test_scores_are_averaged_not_labels():
    class BySize:
        def __call__(self, inputs):
            h = inputs[0]["image"].shape[-2]
            p = {16: [0.6, 0.4], 32: [0.6, 0.4], 48: [0.0, 1.0]}[h]
            return [{"sem_seg": torch.tensor(p).view(2, 1, 1).expand(2, x["height"], x["width"]).clone()} for x in inputs]

    out = SemanticSegmentorWithTTA(BySize(), min_sizes=[16, 32, 48], max_size=1000, flip=False)([_x(32, 32)])[0]["sem_seg"]
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.4, 0.6]))
    assert out.argmax(0).eq(1).all()  # a vote of the three label maps would say class 0


def test_config_switches():
    cfg = _cfg()
    assert not uses_tta(cfg)
    cfg.TEST.AUG.PSEUDO_LABELS = True
    assert not uses_tta(cfg)  # only when writing pseudo-labels
    cfg.TEST.PSEUDO_LABEL_DIR = "/tmp/pl"
    assert uses_tta(cfg)
    with pytest.raises(ValueError, match="MIN_SIZES"):
        SemanticSegmentorWithTTA(_Pointwise(), min_sizes=[], max_size=10)


def test_batch_predictor_with_tta():
    from simformer.engine.predictor import Predictor

    torch.manual_seed(0)
    plain = Predictor(_cfg(), device="cpu")
    torch.manual_seed(0)
    tta = Predictor(_cfg("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.FLIP", "False"), device="cpu")
    assert isinstance(tta.runner, SemanticSegmentorWithTTA)
    images = [np.random.RandomState(1).randint(0, 256, (64, 64, 3), dtype=np.uint8)]
    assert torch.equal(plain.scores(images)[0]["sem_seg"], tta.scores(images)[0]["sem_seg"])
