"""Sliding-window inference (TEST.SLIDING_WINDOW): window placement, equality with whole-image inference
when one window covers the image, exact stitching for a per-pixel model, and the config defaults."""
import pytest
import torch
from torch import nn

from simformer.modeling.sliding_window import SlidingWindowInference, sliding_window_params, window_starts
from tests.engine.test_training import BASE_CONFIG, TINY


@pytest.fixture(scope="module")
def tiny_maskformer():
    """A tiny MaskFormer-R18 built from the synthetic config, random weights, eval mode."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from simformer import add_simformer_config
    from simformer.utils.config_merge import merge_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    merge_config(cfg, BASE_CONFIG, TINY)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_window_starts_cover_the_axis_and_end_at_the_border():
    assert window_starts(50, 64, 42) == [0]
    assert window_starts(64, 64, 42) == [0]
    assert window_starts(100, 64, 42) == [0, 36]
    assert window_starts(200, 64, 42) == [0, 42, 84, 126, 136]
    for length in range(1, 130):
        starts = window_starts(length, 32, 21)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            assert 0 <= s and s + min(32, length) <= length
            covered[s : s + 32] = True
        assert covered.all()
    with pytest.raises(ValueError, match="TEST.SLIDING_WINDOW"):
        window_starts(10, 0, 1)


class _PerPixelModel(nn.Module):
    """Scores depend on each pixel only (a 1x1 conv + softmax), so any tiling gives whole-image scores."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor([10.0, 20.0, 30.0]).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([2.0, 3.0, 4.0]).view(-1, 1, 1))
        self.size_divisibility = 32
        self.conv = nn.Conv2d(3, 5, 1)
        self.batches = []

    def padded_scores(self, images):
        assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0
        self.batches.append(images.shape[0])
        return self.conv(images).softmax(1)

    def whole(self, image):
        return self.conv(((image.float() - self.pixel_mean) / self.pixel_std)[None]).softmax(1)[0]


def test_overlapping_windows_stitch_exactly_for_a_per_pixel_model():
    torch.manual_seed(0)
    model = _PerPixelModel().eval()
    image = torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8)
    wrapper = SlidingWindowInference(model, window=(32, 48), stride=(20, 30), batch_size=4).eval()
    out = wrapper([{"image": image}])[0]["sem_seg"]
    assert out.shape == (5, 70, 100)
    assert torch.allclose(out, model.whole(image), atol=1e-6)
    n = len(window_starts(70, 32, 20)) * len(window_starts(100, 48, 30))
    assert sum(model.batches) == n and max(model.batches) <= 4  # windows in batches of at most 4
    # output size from height / width, as the model's inference does
    resized = wrapper([{"image": image, "height": 35, "width": 50}])[0]["sem_seg"]
    assert resized.shape == (5, 35, 50)


def test_window_covering_the_image_equals_whole_image_inference(tiny_maskformer):
    model = tiny_maskformer
    torch.manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8), "height": 50, "width": 60}]
    with torch.no_grad():
        whole = model(inputs)[0]["sem_seg"]
    wrapper = SlidingWindowInference(model, window=(96, 96), stride=(64, 64)).eval()
    assert torch.equal(wrapper(inputs)[0]["sem_seg"], whole)
    # smaller windows: a prediction of the same shape, from other numbers (each window sees less context)
    tiled = SlidingWindowInference(model, window=(32, 32), stride=(16, 16)).eval()(inputs)[0]["sem_seg"]
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all() and not torch.equal(tiled, whole)


def test_config_defaults_and_errors():
    from detectron2.config import get_cfg

    from simformer import add_simformer_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    assert cfg.TEST.SLIDING_WINDOW.ENABLED is False  # default: whole-image inference
    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = "absolute", (96, 128)
    assert sliding_window_params(cfg) == ((96, 128), (64, 85))
    cfg.TEST.SLIDING_WINDOW.SIZE, cfg.TEST.SLIDING_WINDOW.STRIDE = (64, 64), (32, 48)
    assert sliding_window_params(cfg) == ((64, 64), (32, 48))
    cfg.TEST.SLIDING_WINDOW.STRIDE = (80, 32)
    with pytest.raises(ValueError, match="TEST.SLIDING_WINDOW.STRIDE"):
        sliding_window_params(cfg)
    cfg.TEST.SLIDING_WINDOW.SIZE, cfg.TEST.SLIDING_WINDOW.STRIDE = (0, 0), (0, 0)
    cfg.INPUT.CROP.TYPE = "relative_range"
    with pytest.raises(ValueError, match="TEST.SLIDING_WINDOW.SIZE"):
        sliding_window_params(cfg)
