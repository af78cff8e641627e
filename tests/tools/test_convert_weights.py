"""simformer-convert-weights: torchvision / timm ResNet state dicts -> detectron2 checkpoints.

Random weights in the torchvision format (with random BatchNorm statistics, so that the norms matter) must
load into detectron2's ResNet with no missing or unexpected key and give the same stage outputs."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone import build_resnet_backbone

from simformer import add_simformer_config
from simformer.tools.convert_weights import ConversionError, convert_resnet, load_state_dict, main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _torchvision_resnet(depth, seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for m in model.modules():  # non-trivial norms: random affine parameters and running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _d2_resnet(depth, norm="FrozenBN"):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def _torchvision_stages(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {"stem": x}
    for i, layer in enumerate([model.layer1, model.layer2, model.layer3, model.layer4]):
        x = layer(x)
        out[f"res{i + 2}"] = x
    return out


@pytest.mark.parametrize("depth,ext", [(18, ".pkl"), (50, ".pkl"), (18, ".pth")])
def test_torchvision_resnet_loads_and_matches(tmp_path, capsys, depth, ext):
    tv = _torchvision_resnet(depth)
    src, dst = str(tmp_path / "tv.pth"), str(tmp_path / f"R-{depth}{ext}")
    torch.save(tv.state_dict(), src)
    assert main([src, dst, "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"ResNet-{depth}" in out and "0 missing, 0 unexpected, 0 wrong-shape" in out
    assert "STRIDE_IN_1X1: false" in open(str(tmp_path / f"R-{depth}.yaml")).read()

    if ext == ".pkl":  # detectron2 model-zoo layout: arrays, author, matching heuristics
        with open(dst, "rb") as f:
            ckpt = pickle.load(f)
        assert ckpt["__author__"] == "torchvision" and ckpt["matching_heuristics"] is True
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in ckpt["model"].values())
        assert not any(k.startswith("fc") or "num_batches_tracked" in k for k in ckpt["model"])

    backbone = _d2_resnet(depth)
    checkpointer = DetectionCheckpointer(backbone)
    incompatible = checkpointer._load_model(checkpointer._load_file(dst))  # what .load() logs
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == [] and not incompatible.incorrect_shapes

    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = _torchvision_stages(tv, x)
        stem = backbone.stem(x)
        got = backbone(x)
    torch.testing.assert_close(stem, expected["stem"], rtol=1e-5, atol=1e-5)
    for name in ("res2", "res3", "res4", "res5"):  # res3+ also checks the stride placement (3x3 conv)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_stride_in_1x1_would_differ(tmp_path):
    """The stride convention matters: the same weights with STRIDE_IN_1X1 True give other res3 outputs."""
    tv = _torchvision_resnet(50)
    model, info = convert_resnet(load_state_dict(_save(tv.state_dict(), tmp_path / "tv.pth")))
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1, cfg.MODEL.RESNETS.NORM = 50, True, "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3"]
    wrong = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    wrong.load_state_dict({k: torch.from_numpy(v) for k, v in model.items() if not k.startswith(("res4", "res5"))}, strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(wrong(x)["res3"], _torchvision_stages(tv, x)["res3"], atol=1e-3)


def _save(obj, path):
    torch.save(obj, str(path))
    return str(path)


def test_timm_style_checkpoint(tmp_path, capsys):
    """timm ResNets use torchvision's names; its training checkpoints wrap them ({"state_dict": ...,
    "state_dict_ema": ...}, "module." prefixes), which the converter unwraps."""
    tv = _torchvision_resnet(18)
    sd = {f"module.{k}": v for k, v in tv.state_dict().items()}
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in sd.items()}
    src = _save({"epoch": 3, "arch": "resnet18", "state_dict": sd, "state_dict_ema": ema}, tmp_path / "timm_ckpt.pth.tar")
    assert main([src, str(tmp_path / "timm.pkl"), "--source", "timm", "--verify"]) == 0
    assert main([src, str(tmp_path / "timm_ema.pkl"), "--source", "timm", "--ema"]) == 0
    with open(tmp_path / "timm.pkl", "rb") as f:
        plain = pickle.load(f)
    with open(tmp_path / "timm_ema.pkl", "rb") as f:
        with_ema = pickle.load(f)
    assert plain["__author__"] == "timm"
    np.testing.assert_array_equal(plain["model"]["stem.conv1.weight"], tv.conv1.weight.detach().numpy())
    np.testing.assert_allclose(with_ema["model"]["res2.0.conv1.weight"], tv.layer1[0].conv1.weight.detach().numpy() + 1.0)


def test_unsupported_variants_are_named(tmp_path, capsys):
    sd = _torchvision_resnet(18).state_dict()
    deep_stem = {k: v for k, v in sd.items() if not k.startswith("conv1.")}
    deep_stem.update({"conv1.0.weight": torch.zeros(32, 3, 3, 3), "conv1.1.weight": torch.ones(32), "conv1.3.weight": torch.zeros(32, 32, 3, 3)})
    assert main([_save(deep_stem, tmp_path / "d.pth"), str(tmp_path / "d.pkl")]) == 1
    assert "deep stem" in capsys.readouterr().err
    se = dict(sd, **{"layer1.0.se.fc1.weight": torch.zeros(4, 64, 1, 1)})
    with pytest.raises(ConversionError, match="layer1.0.se.fc1.weight"):
        convert_resnet(load_state_dict(_save(se, tmp_path / "se.pth")))
    assert main([_save(torch.nn.Linear(2, 2), tmp_path / "module.pth"), str(tmp_path / "m.pkl")]) == 1  # a pickled module
    assert "state_dict" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "d.pkl")


def test_loads_into_simformer_model(tmp_path):
    """A config's MODEL.WEIGHTS: the converted R18 lands in backbone.* of the synthetic MaskFormer."""
    tv = _torchvision_resnet(18)
    src, dst = _save(tv.state_dict(), tmp_path / "tv.pth"), str(tmp_path / "R-18.pkl")
    assert main([src, dst]) == 0
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml"))
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.WEIGHTS", dst, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
                         "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "2"])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    torch.testing.assert_close(model.backbone.stem.conv1.weight, tv.conv1.weight)
    torch.testing.assert_close(model.backbone.res5[1].conv2.norm.running_var, tv.layer4[1].bn2.running_var)
