"""Predictor.scores: a list of images in, per-image scores out; batches equal-size images (at most
batch_size per forward pass) and gives the same scores as one image at a time; sliding window by config."""
import numpy as np
import pytest
import torch

from simformer.engine.predictor import Predictor
from simformer.modeling.sliding_window import window_starts
from tests.engine.test_training import BASE_CONFIG, TINY


def _cfg(*opts):
    from detectron2.config import get_cfg

    from simformer import add_simformer_config
    from simformer.utils.config_merge import merge_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    merge_config(cfg, BASE_CONFIG, TINY + list(opts))
    return cfg


def _images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 256, size, dtype=np.uint8) for size in ((64, 64, 3), (48, 80, 3), (64, 64, 3), (64, 64, 3))]


def test_batches_equal_sized_images_and_matches_one_at_a_time():
    torch.manual_seed(0)
    predictor = Predictor(_cfg(), batch_size=2, device="cpu")
    calls = []
    predictor.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    images = _images()
    batched = predictor.scores(images)
    assert sorted(calls) == [1, 1, 2]  # three 64x64 images in batches of <= 2, the 48x80 one alone
    assert [r["sem_seg"].shape for r in batched] == [(3, h, w) for h, w, _ in (im.shape for im in images)]
    calls.clear()
    for image, result in zip(images, batched):
        single = predictor.scores([image])[0]["sem_seg"]
        assert torch.allclose(single, result["sem_seg"], atol=1e-5)
    assert calls == [1, 1, 1, 1]


def test_sliding_window_from_config():
    torch.manual_seed(0)
    cfg = _cfg("TEST.SLIDING_WINDOW.ENABLED", "True", "TEST.SLIDING_WINDOW.SIZE", "(32, 32)", "TEST.SLIDING_WINDOW.STRIDE", "(16, 16)")
    predictor = Predictor(cfg, batch_size=3, device="cpu")
    windows = []
    predictor.model.sem_seg_head.register_forward_hook(lambda m, i, o: windows.append(o["pred_masks"].shape[0]))
    out = predictor.scores(_images()[:2])
    assert [r["sem_seg"].shape for r in out] == [(3, 64, 64), (3, 48, 80)]
    # resized to a 64-pixel shortest edge: 64x64 -> 3x3 windows, 48x80 -> 64x107 -> 3x6 windows
    assert len(window_starts(107, 32, 16)) == 6
    assert max(windows) <= 3 and sum(windows) == 3 * 3 + 3 * 6
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(cfg, batch_size=0)
