"""Export the inference path of a trained model for deployment: ONNX, TorchScript or a ``torch.export``
ExportedProgram (``simformer-export``, :mod:`simformer.tools.export`).

The exported graph is :class:`ScoreMapModel`: a **normalised, padded** image batch (N, 3, H, W) float32
-> class scores (N, K, H, W) float32, argmax over K = the prediction. What happens around it (written
next to the model as ``<output>.json``, :func:`export_metadata`, and done by
:class:`~simformer.engine.onnx_predictor.OnnxPredictor`):

  before: the image in ``input_format`` channel order (RGB / BGR), resized so that its short side is
          ``min_size_test`` (long side at most ``max_size_test``), ``(pixel - pixel_mean) / pixel_std``, padded
          with zeros at the bottom / right to multiples of ``size_divisibility``;
  after:  the scores cropped to the resized image, resized bilinearly to the original size, argmax.

The scores are those of the model's inference: for MaskFormer / SimFormer the semantic map of
``MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP`` (``maskformer``: sum over queries of class probability
x mask probability; ``pixel`` / ``fusion``: the SSA / CCS pixel layer's map), for the per-pixel model
(detectron2's ``SemanticSegmentor``) the classifier's logits.
"""
import json
import logging
import os
from typing import Dict, Optional

import torch
from torch import nn

from ..utils.atomic_io import atomic_write

__all__ = ["ScoreMapModel", "FORMATS", "export_model", "export_metadata", "load_exported", "size_divisibility"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "exported-program")
# exported scores vs PyTorch's: float32 rounding of a different kernel order, relative to the score range
TOLERANCE = 1e-4


class ScoreMapModel(nn.Module):
    """normalised, padded images (N, 3, H, W) -> (N, K, H, W) class scores; H, W multiples of
    ``size_divisibility`` (module doc)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        if hasattr(model, "padded_scores"):
            self.kind = "mask_classification"
        elif hasattr(model, "sem_seg_head") and hasattr(model.sem_seg_head, "layers"):
            self.kind = "per_pixel"
        else:
            raise TypeError(f"cannot export {type(model).__name__}: expected a MaskFormer / SimFormer (padded_scores) or a SemanticSegmentor with the per-pixel head")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "mask_classification":
            return self.model.padded_scores(images)
        logits, _ = self.model.sem_seg_head(self.model.backbone(images))
        return logits


def export_metadata(cfg, fmt: str, model: ScoreMapModel, height: Optional[int], width: Optional[int], batch: Optional[int]) -> Dict:
    """Everything a runtime needs around the graph (module doc), plus class names / colours / base-novel
    groups of the config's first test dataset when it is registered."""
    from detectron2.data import MetadataCatalog

    from ..utils.overlay import display_info

    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    meta = None
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        m = MetadataCatalog.get(name)
        if m.get("stuff_classes", None) is not None and len(m.stuff_classes) == k:
            meta = m
            break
    names, colors, ignore, groups = display_info(meta, k)
    inner = model.model
    return {
        "format": fmt,
        "input": "images",
        "output": "scores",
        "input_shape": [batch, 3, height, width],  # None = dynamic
        "input_format": cfg.INPUT.FORMAT,
        "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
        "size_divisibility": size_divisibility(inner),
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "num_classes": int(k),
        "scores": "logits" if model.kind == "per_pixel" else cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "dataset": meta.name if meta is not None else None,
        "class_names": list(names),
        "class_colors": [[int(c) for c in col] for col in colors],
        "ignore_label": int(ignore),
        "groups": {g: [int(i) for i in ids] for g, ids in (groups or {}).items()},
    }


def size_divisibility(model: nn.Module) -> int:
    """What the model pads its input to (H and W multiples of it), as its own inference does: MaskFormer /
    SimFormer ``size_divisibility`` (and the backbone's), detectron2's ``SemanticSegmentor`` the backbone's."""
    return max(int(getattr(model, "size_divisibility", 0) or 0), int(model.backbone.size_divisibility or 0), 1)


def _example(size_div: int, height: int, width: int, batch: int) -> torch.Tensor:
    up = lambda v: -(-v // size_div) * size_div  # noqa: E731
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, up(height), up(width), generator=g)


def export_model(cfg, weights: Optional[str], fmt: str, output: str, height: int = 512, width: int = 512, dynamic: bool = False, batch: int = 1, check: bool = True) -> Dict:
    """Build ``cfg``'s model with ``weights`` (the project's checkpointer: a missing file or other tensor
    shapes are errors), export :class:`ScoreMapModel` to ``output`` in ``fmt`` (:data:`FORMATS`) and write
    ``<output>.json`` (:func:`export_metadata`).

    Fixed size: the graph takes exactly (batch, 3, H, W) with H, W = ``height``, ``width`` rounded up to the
    size divisibility. ``dynamic``: any batch and any H, W (multiples of the size divisibility); traced at
    (2, 3, H, W). ``check``: run the exported model on the traced input and, when dynamic, on a second
    size, and compare with PyTorch; returns ``{"output", "metadata", "max_abs_diff", ...}`` and raises
    when a difference exceeds :data:`TOLERANCE` times the score range.
    """
    from .predictor import Predictor

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if min(height, width, batch) < 1:
        raise ValueError(f"export: height, width and batch must be positive, got {height}, {width}, {batch}")
    predictor = Predictor(cfg, weights, device="cpu")
    model = ScoreMapModel(predictor.model).eval()
    size_div = size_divisibility(model.model)
    example = _example(size_div, height, width, 2 if dynamic else batch)
    if fmt == "exported-program" and not output.endswith(".pt2"):
        raise ValueError(f"--output {output!r}: an ExportedProgram archive must end in .pt2 (torch.export.save)")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    stem, ext = os.path.splitext(output)
    tmp = f"{stem}.tmp{os.getpid()}{ext}"  # written, then renamed: a killed export leaves no partial model file
    with torch.no_grad():
        if fmt == "onnx":
            axes = {"images": {0: "batch", 2: "height", 3: "width"}, "scores": {0: "batch", 2: "height", 3: "width"}}
            torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=["images"], output_names=["scores"], dynamic_axes=axes if dynamic else None, opset_version=17)
        elif fmt == "torchscript":
            traced = torch.jit.trace(model, (example,), check_trace=False)
            torch.jit.save(traced, tmp)
        else:
            shapes = None
            if dynamic:
                hd = torch.export.Dim("height_blocks", min=1, max=4096 // size_div)
                wd = torch.export.Dim("width_blocks", min=1, max=4096 // size_div)
                shapes = ({0: torch.export.Dim("batch", min=1, max=256), 2: size_div * hd, 3: size_div * wd},)
            program = torch.export.export(model, (example,), dynamic_shapes=shapes)
            torch.export.save(program, tmp)
    os.replace(tmp, output)
    meta = export_metadata(cfg, fmt, model, None if dynamic else example.shape[2], None if dynamic else example.shape[3], None if dynamic else example.shape[0])
    meta["weights"] = weights
    atomic_write(output + ".json", lambda f: json.dump(meta, f, indent=1), mode="w")
    result = {"output": output, "metadata": output + ".json", "input_shape": list(example.shape)}
    if check:
        inputs = [example]
        if dynamic:
            inputs.append(_example(size_div, height + size_div, max(size_div, width - size_div), 1))
        run = load_exported(output, fmt)
        diffs = []
        for x in inputs:
            with torch.no_grad():
                ref = model(x)
                out = torch.as_tensor(run(x))
            if out.shape != ref.shape:
                raise RuntimeError(f"{output}: exported model gives scores of shape {tuple(out.shape)} for input {tuple(x.shape)}, PyTorch {tuple(ref.shape)}")
            diff = float((out - ref).abs().max())
            scale = float(ref.abs().max()) or 1.0
            if diff > TOLERANCE * scale:
                raise RuntimeError(f"{output}: exported scores differ from PyTorch's by {diff:.3g} (input {tuple(x.shape)}, tolerance {TOLERANCE * scale:.3g})")
            diffs.append({"input_shape": list(x.shape), "max_abs_diff": diff, "score_range": scale})
        result["checks"] = diffs
        result["max_abs_diff"] = max(d["max_abs_diff"] for d in diffs)
    return result


def load_exported(path: str, fmt: str):
    """A callable ``images (N, 3, H, W) float32 tensor -> scores`` for an exported file (ONNX through
    onnxruntime on the CPU, returning a NumPy array; TorchScript / ExportedProgram back in PyTorch)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model file not found: {path}")
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.detach().cpu().numpy() if hasattr(x, "detach") else x})[0]
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location="cpu")
        return lambda x: module(x)
    if fmt == "exported-program":
        module = torch.export.load(path).module()
        return lambda x: module(x)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
