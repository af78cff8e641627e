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
    cfg.MODEL.TIMM.PRETRAINED_FILE = ""  # without weights (timm backbones would read the file when built)
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


def test_renamed_keys_of_old_configs_are_read_under_their_new_names(tmp_path, caplog):
    """Old names (BASE_LOSS / DISTILL_LOSS, CCS.TAU, INPUT.SIZE_DIVISIBILITY) still load, into the new keys,
    with one warning per key, also over a shipped _BASE_ that sets the new name (Base-synthetic: 96)."""
    import logging

    from detectron2.config import get_cfg

    from simformer import add_simformer_config
    from simformer.utils import config_merge
    from simformer.utils.config_merge import RENAMED_KEYS, merge_config

    old = tmp_path / "old.yaml"
    old.write_text("_BASE_: %s\nMODEL:\n  SIMFORMER:\n    CROSS_IMG_SIM:\n      BASE_LOSS: 1.0\n      DISTILL_LOSS: 0.5\n  CCS:\n    TAU: 0.05\nINPUT:\n  SIZE_DIVISIBILITY: 64\n"
                   % os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic", "simformer", "seg.yaml"))
    config_merge._warned.clear()
    with caplog.at_level(logging.WARNING, logger="simformer.utils.config_merge"):
        for _ in range(2):
            cfg = get_cfg()
            add_simformer_config(cfg)
            merge_config(cfg, str(old), ["MODEL.CCS.TAU", "0.2"])
    cis = cfg.MODEL.SIMFORMER.CROSS_IMG_SIM
    assert (cis.BASE_WEIGHT, cis.DISTILL_WEIGHT, cfg.MODEL.CCS.INIT_TEMPERATURE, cfg.INPUT.PAD_TO_SIZE) == (1.0, 0.5, 0.2, 64)
    warnings = [r.getMessage() for r in caplog.records if "is now" in r.getMessage()]
    assert len(warnings) == len(RENAMED_KEYS) and all(any(k in w for w in warnings) for k in RENAMED_KEYS)
    # a user's old file on top of a shipped base that sets the new name: the user's value wins
    assert cfg.INPUT.PAD_TO_SIZE == 64


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + k + ".")
        else:
            yield prefix + k, v


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)), ids=lambda p: os.path.relpath(p, ROOT))
def test_config_sets_only_what_differs_from_its_base(path):
    """No key restates the value its _BASE_ (or the defaults) already gives: a diff between two configs
    is the experiment."""
    import yaml

    raw = yaml.safe_load(open(path)) or {}
    base = raw.pop("_BASE_", None)
    cfg = get_cfg()
    add_simformer_config(cfg)
    if base:
        cfg.merge_from_file(os.path.join(os.path.dirname(path), base))
    restated = []
    for key, value in _flat(raw):
        node = cfg
        try:
            for part in key.split("."):
                node = node[part]
        except KeyError:
            continue
        if key != "OUTPUT_DIR" and _norm(node) == _norm(value):
            restated.append(f"{key}: {value!r}")
    assert not restated, f"{os.path.relpath(path, ROOT)} restates its base: {restated}"
