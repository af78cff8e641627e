"""TimmBackbone: timm feature pyramids as res2..res5, local pretrained files, freezing, the weight
converter, Mask2Former's weight-decay rule, and a timm-backbone MaskFormer that learns."""
import os

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")  # the [timm] extra; CI installs it with [dev]

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from simformer.engine.optimizer import optimizer_param_groups  # noqa: E402
from simformer.engine.predictor import Predictor  # noqa: E402
from simformer.tools.convert_weights import main as convert_main  # noqa: E402
from simformer.tools.predict import build_cfg  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic", "mask2former_convnext_atto_fully_supervised.yaml")


def _cfg(name="convnext_atto", *opts):
    return build_cfg(CONFIG, tiny_model(num_classes=3) + ["MODEL.TIMM.NAME", name, "MODEL.DEVICE", "cpu", *opts])


@pytest.mark.parametrize("name, channels", [
    ("convnext_atto", [40, 80, 160, 320]),
    ("swin_tiny_patch4_window7_224", [96, 192, 384, 768]),  # NHWC maps, fixed 224 input in timm by default
    ("resnet18", [64, 128, 256, 512]),  # five levels in timm (stride 2 too): res2..res5 picked by stride
])
def test_levels_strides_and_any_size(name, channels):
    backbone = build_backbone(_cfg(name), ShapeSpec(channels=3))
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32] and [s.channels for s in shapes.values()] == channels
    assert backbone.size_divisibility == 32
    backbone.eval()
    for h, w in [(64, 96), (160, 32)]:
        out = backbone(torch.randn(2, 3, h, w))
        for level, s in shapes.items():
            assert tuple(out[level].shape) == (2, s.channels, h // s.stride, w // s.stride)


def test_pretrained_file_is_loaded_by_timm(tmp_path):
    torch.manual_seed(3)
    reference = timm.create_model("convnext_atto")  # a "downloaded" classification model, saved first
    path = str(tmp_path / "convnext_atto.pth")
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(_cfg("convnext_atto", "MODEL.TIMM.PRETRAINED_FILE", path), ShapeSpec(channels=3))
    own = backbone.body.state_dict()
    ref = reference.state_dict()
    assert torch.equal(own["stem_0.weight"], ref["stem.0.weight"])
    assert torch.equal(own["stages_3.blocks.1.mlp.fc2.weight"], ref["stages.3.blocks.1.mlp.fc2.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone(_cfg("convnext_atto", "MODEL.TIMM.PRETRAINED_FILE", str(tmp_path / "missing.pth")), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="not a timm model"):
        build_backbone(_cfg("convnext_atoo"), ShapeSpec(channels=3))


def test_freeze_at_and_norm():
    backbone = build_backbone(_cfg("resnet18", "MODEL.TIMM.FREEZE_AT", "2", "MODEL.TIMM.NORM", "FrozenBN"), ShapeSpec(channels=3))
    frozen = {n.split(".")[0] for n, p in backbone.body.named_parameters() if not p.requires_grad}
    trained = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "layer1"} and trained == {"layer2", "layer3", "layer4"}  # stem + res2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    swin = build_backbone(_cfg("swin_tiny_patch4_window7_224", "MODEL.TIMM.FREEZE_AT", "1"), ShapeSpec(channels=3))
    assert {n.split(".")[0] for n, p in swin.body.named_parameters() if not p.requires_grad} == {"patch_embed"}


def test_no_weight_decay_on_norms_and_position_tables():
    model = build_model(_cfg("swin_tiny_patch4_window7_224"))
    groups = {g["name"]: g for g in optimizer_param_groups(model, 1e-4, 0.05, 0.0, 0.0, 0.1)}
    table = "backbone.body.layers_0.blocks.0.attn.relative_position_bias_table"
    assert groups[table]["weight_decay"] == 0.0 and groups[table]["lr"] == pytest.approx(1e-5)
    assert groups["backbone.body.layers_0.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert groups["backbone.body.layers_0.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05


def test_converted_timm_weights_load_through_model_weights(tmp_path):
    torch.manual_seed(4)
    reference = timm.create_model("convnext_atto")
    src = str(tmp_path / "atto.pth")
    torch.save(reference.state_dict(), src)
    out = str(tmp_path / "atto_d2.pth")
    assert convert_main([src, out, "--timm-model", "convnext_atto"]) == 0
    assert os.path.isfile(str(tmp_path / "atto_d2.yaml"))
    predictor = Predictor(_cfg("convnext_atto"), out, device="cpu")
    assert not [k for k in predictor.missing_keys if k.startswith("backbone.")]
    own = predictor.model.backbone.body.state_dict()
    assert torch.equal(own["stages_2.blocks.0.conv_dw.weight"], reference.state_dict()["stages.2.blocks.0.conv_dw.weight"])
    assert convert_main([src, str(tmp_path / "x.pth"), "--timm-model", "swin_tiny_patch4_window7_224"]) == 1  # not its weights


def _toy_batch(n=4, size=64, seed=0):
    """Images with a left / right split into two of 3 colour classes and a square of the third."""
    rng = np.random.RandomState(seed)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230]])
    batch = []
    for _ in range(n):
        a, b, c = rng.permutation(3)
        label = np.full((size, size), a, np.int64)
        label[:, size // 2 :] = b
        y, x = rng.randint(8, size - 28, 2)
        label[y : y + 20, x : x + 20] = c
        image = (colours[label] + rng.randint(-20, 20, (size, size, 3))).clip(0, 255).astype(np.float32)
        from detectron2.structures import Instances

        classes = np.unique(label)
        inst = Instances((size, size))
        inst.gt_classes = torch.as_tensor(classes)
        inst.gt_masks = torch.as_tensor(label[None] == classes[:, None, None])
        batch.append({"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "instances": inst, "label": label})
    return batch


def test_timm_maskformer_learns_on_cpu():
    """The synthetic timm config (ConvNeXt-Atto + masked-attention decoder, tiny head) fits a toy set in
    200 iterations: the loss falls below 0.3x its start and > 95 % of the pixels are right."""
    torch.manual_seed(0)
    cfg = _cfg("convnext_atto", "SOLVER.BASE_LR", "0.001")
    model = build_model(cfg)
    batch = _toy_batch(n=3, size=48)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    losses = []
    model.train()
    for _ in range(200):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    model.eval()
    with torch.no_grad():
        preds = [o["sem_seg"].argmax(0).numpy() for o in model([{"image": x["image"]} for x in batch])]
    accuracy = np.mean([(p == x["label"]).mean() for p, x in zip(preds, batch)])
    assert accuracy > 0.95
