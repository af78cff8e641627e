"""Every YAML under configs/ merges into the full config and builds a model on CPU without weights."""
import glob
import os

import pytest
import torch

import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from simformer import add_simformer_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True) if not os.path.basename(p).startswith("Base-"))


def load_cfg(path):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_exist():
    assert CONFIGS, "no configs found"


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds_model(path):
    cfg = load_cfg(path)
    model = build_model(cfg)
    model.eval()
    size = 64
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, size, size, dtype=torch.uint8), "height": size, "width": size}])
    assert out[0]["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, size, size)


def test_misspelled_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERYS: 10\n")
    with pytest.raises(KeyError, match="NUM_OBJECT_QUERYS"):
        load_cfg(str(bad))
