"""Convert torchvision / timm ResNet weights into the detectron2 checkpoint format the configs load.

    simformer-convert-weights resnet50_torchvision.pth R-50.pkl [--verify]
    python -m simformer.tools.convert_weights IN OUT ...      # the same, without the console script

IN: a state dict saved with ``torch.save(model.state_dict(), path)`` (``.pth`` / ``.pt`` / ``.bin``),
a ``.safetensors`` file (timm / Hugging Face hub), or a pickle of arrays; wrappers such as
``{"state_dict": ...}`` (timm training checkpoints; ``--ema`` takes ``state_dict_ema``) and ``module.``
prefixes are removed. OUT: ``.pkl`` (pickle of float32 numpy arrays, like detectron2's model zoo) or
``.pth`` (tensors); either way ``{"model": ..., "__author__": ..., "matching_heuristics": True}``, which
``DetectionCheckpointer`` loads into ``MODEL.WEIGHTS``'s model by name suffix, so the backbone keys
(``stem.*``, ``res2.*`` ... ``res5.*``) land in ``backbone.*`` of any simformer model.

Names (torchvision and timm ResNets use the same ones):

    conv1 / bn1                        -> stem.conv1 / stem.conv1.norm
    layerN.M.convK / layerN.M.bnK      -> res{N+1}.M.convK / res{N+1}.M.convK.norm
    layerN.M.downsample.0 / .1         -> res{N+1}.M.shortcut / res{N+1}.M.shortcut.norm
    fc.*, num_batches_tracked          -> dropped

timm variants whose layers detectron2's ResNet does not have (deep stem ``conv1.0`` ... of resnet*c/d/s,
average-pool shortcut ``downsample.1/.2`` of resnet*d, squeeze-excitation ``se.*``, anti-aliasing ``aa``)
are refused with the keys named. The config settings the weights need are printed and written next to
OUT (``<OUT stem>.yaml``):

  * stride in the 3x3 convolution (torchvision / timm "ResNet v1.5"): ``MODEL.RESNETS.STRIDE_IN_1X1: False``
    (detectron2's own MSRA ``R-50.pkl`` is the exception: stride in the 1x1, ``True``, BGR, std 1);
  * input normalisation: these models take RGB in [0, 1] normalised with ImageNet mean / std; detectron2
    takes 0-255 pixels, so ``PIXEL_MEAN = 255 * mean`` = [123.675, 116.28, 103.53], ``PIXEL_STD = 255 * std``
    = [58.395, 57.12, 57.375], ``INPUT.FORMAT: RGB`` (``--mean`` / ``--std`` for models trained otherwise);
  * depth, ``RES2_OUT_CHANNELS`` (64 for R18/R34), ``NUM_GROUPS`` / ``WIDTH_PER_GROUP`` (ResNeXt, wide
    ResNets), read from the tensor shapes; ``NORM: FrozenBN`` is what ImageNet-initialised runs use.
"""
import argparse
import os
import pickle
import re
import sys
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["load_state_dict", "convert_resnet", "convert_timm", "save_d2_checkpoint", "config_settings", "timm_config_settings", "verify_d2_load", "main"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34, ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101, ("bottleneck", (3, 8, 36, 3)): 152}
_BN = ("weight", "bias", "running_mean", "running_var")
_DROP = re.compile(r"(^|\.)num_batches_tracked$|^(fc|head\.fc|classifier|last_linear)\.")
_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


class ConversionError(ValueError):
    pass


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if str(v.dtype) in ("torch.bfloat16", "torch.float16"):
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def load_state_dict(path: str, ema: bool = False) -> "OrderedDict[str, np.ndarray]":
    """Read a state dict (torch / safetensors / pickle), unwrap common containers, strip a shared
    ``module.`` / ``model.`` / ``backbone.`` prefix; values as numpy arrays."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ConversionError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)") from None
        data = load_file(path)
    elif path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        import torch

        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConversionError(f"{path}: not a readable state dict ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                  "save one with torch.save(model.state_dict(), path)") from None
    if not isinstance(data, Mapping):
        raise ConversionError(f"{path}: expected a dict of tensors, got {type(data).__name__}; save model.state_dict(), not the model")
    if "__author__" in data and "model" in data:
        raise ConversionError(f"{path}: already a detectron2 checkpoint (by {data['__author__']!r}); point MODEL.WEIGHTS at it directly")
    keys = (["state_dict_ema"] if ema else []) + ["state_dict", "model_state", "model", "module"]
    for key in keys:
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    else:
        if ema:
            raise ConversionError(f"{path}: --ema given but there is no 'state_dict_ema'")
    out = OrderedDict((k, v) for k, v in data.items() if hasattr(v, "shape"))
    for prefix in ("module.", "model.", "backbone.", "encoder."):
        while out and all(k.startswith(prefix) for k in out):
            out = OrderedDict((k[len(prefix):], v) for k, v in out.items())
    return OrderedDict((k, _to_numpy(v)) for k, v in out.items())


def _rename(key: str) -> Optional[str]:
    """torchvision / timm ResNet key -> detectron2 key; None = dropped; KeyError = not convertible."""
    if _DROP.search(key):
        return None
    if key == "conv1.weight":
        return "stem.conv1.weight"
    m = re.match(r"^bn1\.(\w+)$", key)
    if m and m.group(1) in _BN:
        return f"stem.conv1.norm.{m.group(1)}"
    m = _LAYER.match(key)
    if m:
        stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        m2 = re.match(r"^conv(\d)\.weight$", rest)
        if m2:
            return f"res{stage}.{block}.conv{m2.group(1)}.weight"
        m2 = re.match(r"^bn(\d)\.(\w+)$", rest)
        if m2 and m2.group(2) in _BN:
            return f"res{stage}.{block}.conv{m2.group(1)}.norm.{m2.group(2)}"
        if rest == "downsample.0.weight":
            return f"res{stage}.{block}.shortcut.weight"
        m2 = re.match(r"^downsample\.1\.(\w+)$", rest)
        if m2 and m2.group(1) in _BN:
            return f"res{stage}.{block}.shortcut.norm.{m2.group(1)}"
    raise KeyError(key)


def convert_resnet(state: Mapping[str, np.ndarray]) -> Tuple["OrderedDict[str, np.ndarray]", Dict]:
    """Rename a torchvision / timm ResNet state dict to detectron2's ResNet names.

    Returns ``(model dict of float32 arrays, info)`` with info = depth, block type, stem / res2 channels,
    num_groups, width_per_group, dropped keys. Raises :class:`ConversionError` naming the keys of layers
    detectron2's ResNet does not have."""
    if "conv1.0.weight" in state:
        raise ConversionError("deep stem (conv1.0 / conv1.1 / ... : timm resnet*c / *d / *s, ResNet-D): detectron2's ResNet has a single 7x7 stem conv; use a standard ResNet (e.g. timm 'resnet50.a1_in1k', torchvision resnet50)")
    avg_down = [k for k in state if re.search(r"\.downsample\.2\.", k)]
    if avg_down:
        raise ConversionError(f"average-pool shortcut (timm resnet*d, avg_down): {avg_down[:2]} ...; detectron2's ResNet shortcut is a strided 1x1 conv")
    out, dropped, bad = OrderedDict(), [], []
    for k, v in state.items():
        try:
            new = _rename(k)
        except KeyError:
            bad.append(k)
            continue
        if new is None:
            dropped.append(k)
        else:
            out[new] = np.ascontiguousarray(v, dtype=np.float32)
    if bad:
        raise ConversionError(f"{len(bad)} keys are not part of a plain ResNet (squeeze-excitation, attention, anti-aliasing, ...?): {bad[:8]}")
    if "stem.conv1.weight" not in out or "res2.0.conv1.weight" not in out:
        raise ConversionError("not a ResNet state dict: no conv1.weight / layer1.0.conv1.weight")
    blocks = tuple(len({int(k.split(".")[1]) for k in out if k.startswith(f"res{s}.")}) for s in range(2, 6))
    kind = "bottleneck" if "res2.0.conv3.weight" in out else "basic"
    depth = _DEPTHS.get((kind, blocks))
    if depth is None:
        raise ConversionError(f"{kind} blocks per stage {blocks}: not a ResNet depth detectron2 builds (18, 34, 50, 101, 152)")
    info = {"depth": depth, "block": kind, "blocks_per_stage": list(blocks), "stem_out_channels": int(out["stem.conv1.weight"].shape[0]), "dropped": dropped}
    if kind == "bottleneck":
        bottleneck = int(out["res2.0.conv1.weight"].shape[0])
        groups = bottleneck // int(out["res2.0.conv2.weight"].shape[1])
        info.update(res2_out_channels=int(out["res2.0.conv3.weight"].shape[0]), num_groups=groups, width_per_group=bottleneck // groups)
    else:
        info.update(res2_out_channels=int(out["res2.0.conv2.weight"].shape[0]), num_groups=1, width_per_group=64)
    return out, info


def config_settings(info: Mapping, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, weights: str = "") -> Dict:
    """The detectron2 config values the converted weights need (nested dict, YAML-ready)."""
    r = lambda xs: [round(255.0 * x, 3) for x in xs]  # noqa: E731
    resnets = {"DEPTH": info["depth"], "STRIDE_IN_1X1": False, "NORM": "FrozenBN", "RES2_OUT_CHANNELS": info["res2_out_channels"], "STEM_OUT_CHANNELS": info["stem_out_channels"]}
    if info["block"] == "bottleneck":
        resnets.update(NUM_GROUPS=info["num_groups"], WIDTH_PER_GROUP=info["width_per_group"])
    model = {"WEIGHTS": weights, "PIXEL_MEAN": r(mean), "PIXEL_STD": r(std), "BACKBONE": {"NAME": "build_resnet_backbone"}, "RESNETS": resnets}
    return {"MODEL": model, "INPUT": {"FORMAT": "RGB"}}


def save_d2_checkpoint(model: Mapping[str, np.ndarray], path: str, author: str = "torchvision", extra: Optional[Dict] = None) -> None:
    """Write ``{"model", "__author__", "matching_heuristics": True}``: a pickle of arrays for ``.pkl``,
    ``torch.save`` of tensors otherwise."""
    obj = {"model": dict(model), "__author__": author, "matching_heuristics": True}
    if extra:
        obj.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pkl"):
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        import torch

        obj["model"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.items()}
        torch.save(obj, path)


def verify_d2_load(model: Mapping[str, np.ndarray], info: Mapping, norm: str = "FrozenBN"):
    """Build detectron2's ResNet for ``info`` and load ``model`` into it; returns (missing, unexpected,
    wrong shape) key lists (all empty when the conversion is complete)."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    import simformer  # noqa: F401  (detectron2 compatibility patches)

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = info["depth"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = info["res2_out_channels"]
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = info["stem_out_channels"]
    cfg.MODEL.RESNETS.NUM_GROUPS = info["num_groups"]
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = info["width_per_group"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    own = backbone.state_dict()
    shapes = [k for k, v in model.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.items() if k not in shapes}
    result = backbone.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    return missing, list(result.unexpected_keys), shapes


def convert_timm(path: str, model_name: str) -> Tuple["OrderedDict[str, np.ndarray]", Dict]:
    """A timm classification state dict (any timm model, e.g. Swin, ConvNeXt) -> ``backbone.body.*`` keys of
    :class:`~simformer.modeling.backbone.TimmBackbone` for ``MODEL.TIMM.NAME = model_name``. The file is read by
    timm's own pretrained loader (its key filters and the dropped classifier), so what loads here loads in
    training; returns (state, info with the model's input mean / std in [0, 1])."""
    from ..modeling.backbone.timm_backbone import build_timm_features

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        body = build_timm_features(model_name, pretrained_file=path)
    except (RuntimeError, KeyError, ValueError) as e:  # the file is not this model's
        raise ConversionError(f"{path} does not load into timm model {model_name!r}: {str(e)[:500]}") from e
    cfg = getattr(body, "pretrained_cfg", None) or {}
    state = OrderedDict((f"backbone.body.{k}", _to_numpy(v)) for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked"))
    info = {"timm_model": model_name, "mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD))}
    return state, info


def timm_config_settings(info: Mapping, weights: str = "") -> Dict:
    r = lambda xs: [round(255.0 * x, 3) for x in xs]  # noqa: E731
    model = {"WEIGHTS": weights, "PIXEL_MEAN": r(info["mean"]), "PIXEL_STD": r(info["std"]), "BACKBONE": {"NAME": "TimmBackbone"}, "TIMM": {"NAME": info["timm_model"], "PRETRAINED_FILE": ""}}
    return {"MODEL": model, "INPUT": {"FORMAT": "RGB"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="simformer-convert-weights", description="Convert a torchvision / timm ResNet state dict into a detectron2 checkpoint (MODEL.WEIGHTS).", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None)
    p.add_argument("input", help="torchvision / timm ResNet state dict (.pth, .pt, .bin, .safetensors, .pkl)")
    p.add_argument("output", help="detectron2 checkpoint to write (.pkl or .pth)")
    p.add_argument("--source", choices=("torchvision", "timm"), default="torchvision", help="recorded as __author__ (the names are the same)")
    p.add_argument("--ema", action="store_true", help="take 'state_dict_ema' of a timm training checkpoint")
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, metavar=("R", "G", "B"), help="input mean the model was trained with, in [0, 1] (default ImageNet)")
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD, metavar=("R", "G", "B"), help="input std in [0, 1] (default ImageNet)")
    p.add_argument("--verify", action="store_true", help="load the result into detectron2's ResNet and report missing / unexpected keys")
    p.add_argument("--timm-model", default=None, metavar="NAME", help="any timm model (Swin, ConvNeXt, ...): IN is its classification state dict, OUT holds the TimmBackbone keys (MODEL.BACKBONE.NAME TimmBackbone, MODEL.TIMM.NAME NAME)")
    args = p.parse_args(argv)
    if not args.output.endswith((".pkl", ".pth")):
        print("error: output must end in .pkl or .pth", file=sys.stderr)
        return 2
    if args.timm_model:
        return _main_timm(args)
    try:
        state = load_state_dict(args.input, ema=args.ema)
        model, info = convert_resnet(state)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    settings = config_settings(info, args.mean, args.std, weights=os.path.abspath(args.output))
    save_d2_checkpoint(model, args.output, author=args.source, extra={"simformer_config": settings})
    import yaml

    yaml_path = os.path.splitext(args.output)[0] + ".yaml"
    with open(yaml_path, "w") as f:
        f.write(f"# Settings for {os.path.basename(args.output)} (converted from {os.path.basename(args.input)}); merge into your config.\n")
        yaml.safe_dump(settings, f, sort_keys=False, default_flow_style=None)
    nbt = sum(k.endswith("num_batches_tracked") for k in info["dropped"])
    other = [k for k in info["dropped"] if not k.endswith("num_batches_tracked")]
    print(f"Converted {len(state)} tensors -> {len(model)} (dropped: {', '.join(other + ([f'{nbt} x num_batches_tracked'] if nbt else [])) or 'none'})")
    print(f"ResNet-{info['depth']} ({info['block']} blocks {info['blocks_per_stage']}, res2 {info['res2_out_channels']} channels, groups {info['num_groups']} x {info['width_per_group']}) -> {args.output}")
    print(f"Config settings ({yaml_path}):")
    print("  " + yaml.safe_dump(settings, sort_keys=False, default_flow_style=None).replace("\n", "\n  ").rstrip())
    if args.verify:
        missing, unexpected, shapes = verify_d2_load(model, info)
        print(f"Verify (detectron2 build_resnet_backbone, FrozenBN): {len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} wrong-shape keys")
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                print(f"  {name}: {keys[:8]}")
        if missing or unexpected or shapes:
            return 1
    return 0


def _main_timm(args) -> int:
    import yaml

    try:
        model, info = convert_timm(args.input, args.timm_model)
    except (ConversionError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    settings = timm_config_settings(info, weights=os.path.abspath(args.output))
    obj_extra = {"simformer_config": settings}
    save_d2_checkpoint(model, args.output, author="timm", extra=obj_extra)
    yaml_path = os.path.splitext(args.output)[0] + ".yaml"
    with open(yaml_path, "w") as f:
        f.write(f"# Settings for {os.path.basename(args.output)} (timm {args.timm_model}, from {os.path.basename(args.input)}); merge into your config.\n")
        yaml.safe_dump(settings, f, sort_keys=False, default_flow_style=None)
    print(f"timm {args.timm_model}: {len(model)} backbone tensors -> {args.output}; config settings in {yaml_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
