"""Export a trained model for deployment (:mod:`simformer.engine.export`).

    simformer-export --config-file configs/synthetic/simformer/seg_ssa.yaml --weights model_final.pth \\
        --format onnx --output deploy/model.onnx [--height 512 --width 512 | --dynamic] [--opts KEY VALUE ...]
    python -m simformer.tools.export ...          # the same, without the console script

Formats: ``onnx`` (opset 17, run by onnxruntime; ``simformer-predict --onnx``), ``torchscript``
(``torch.jit.load``), ``exported-program`` (``torch.export.load``, file name ending in ``.pt2``). The graph
maps a normalised, padded image batch (N, 3, H, W) to class scores (N, K, H, W); the pre / post-processing
and the class names are written to ``<output>.json``. Without ``--dynamic`` the input size is fixed
(``--batch`` x 3 x ``--height`` x ``--width``, rounded up to the size divisibility); with it any batch
and any multiple of the size divisibility. After exporting, the exported model is run on the trace
input (and a second size when dynamic) and compared with PyTorch; a difference beyond 1e-4 of the score
range is an error. Exit status 0 = exported and checked, 2 = bad arguments / files, 1 = the check failed.
"""
import argparse
import json
import logging
import sys

__all__ = ["main"]


def get_parser() -> argparse.ArgumentParser:
    from ..engine.export import FORMATS

    p = argparse.ArgumentParser(prog="simformer-export", description="Export a trained simformer model (image batch -> class scores) to ONNX, TorchScript or a torch.export ExportedProgram.")
    p.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was trained with")
    p.add_argument("--weights", default=None, help="checkpoint (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", "-o", required=True, help="output file (.onnx / .ts / .pt2); metadata in <output>.json")
    p.add_argument("--height", type=int, default=512, help="input height of a fixed-size export (and of the trace)")
    p.add_argument("--width", type=int, default=512, help="input width of a fixed-size export (and of the trace)")
    p.add_argument("--batch", type=int, default=1, help="batch size of a fixed-size export")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (multiples of the size divisibility)")
    p.add_argument("--no-check", action="store_true", help="do not compare the exported model with PyTorch")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (must come last)")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(args.opts) % 2:
        print(f"error: config overrides must be KEY VALUE pairs, got {args.opts}", file=sys.stderr)
        return 2
    from ..engine.export import export_model
    from .predict import build_cfg

    cfg = build_cfg(args.config_file, args.opts)
    weights = args.weights or cfg.MODEL.WEIGHTS
    if not weights:
        print("error: no weights: pass --weights or set MODEL.WEIGHTS", file=sys.stderr)
        return 2
    try:
        result = export_model(cfg, weights, args.format, args.output, args.height, args.width, dynamic=args.dynamic, batch=args.batch, check=not args.no_check)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    shape = "dynamic (N, 3, H, W)" if args.dynamic else "x".join(str(v) for v in result["input_shape"])
    print(f"Exported {args.format} -> {args.output} (input {shape}); pre / post-processing in {result['metadata']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
