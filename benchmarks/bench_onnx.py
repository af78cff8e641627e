#!/usr/bin/env python
"""Inference time of an exported ONNX model (onnxruntime, CPU) against the same model in PyTorch, side by
side in one process (interleaved rounds; median and range of the per-round ratio).

    python benchmarks/bench_onnx.py [--config-file configs/synthetic/simformer/seg_ssa.yaml] [--size 128]
                                    [--batch 1] [--rounds 20] [--threads 2] [--out FILE.json] [KEY VALUE ...]

The model has random weights (timing does not depend on them); both run the exported graph's computation
(:class:`simformer.engine.export.ScoreMapModel`: normalised padded images -> class scores), PyTorch in
``torch.inference_mode``, onnxruntime with its default CPU session options and ``--threads`` intra-op
threads. The ONNX file is exported with ``--dynamic`` and checked against PyTorch first.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import simformer  # noqa: E402,F401
from _measure import REPO, machine_note, median, set_threads  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from simformer.engine.export import ScoreMapModel, export_model  # noqa: E402
from simformer.tools.predict import build_cfg  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "synthetic", "simformer", "seg_ssa.yaml"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args()
    import onnxruntime as ort

    set_threads(args.threads)
    cfg = build_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(args.opts))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "w.pth")
        DetectionCheckpointer(build_model(cfg), save_dir=tmp).save("w")
        onnx_path = os.path.join(tmp, "m.onnx")
        t0 = time.perf_counter()
        check = export_model(cfg, weights, "onnx", onnx_path, args.size, args.size, dynamic=True)
        export_s = time.perf_counter() - t0
        from simformer.engine.predictor import Predictor

        model = ScoreMapModel(Predictor(cfg, weights, device="cpu").model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        xn = x.numpy()

        def run_torch():
            with torch.inference_mode():
                return model(x)

        def run_onnx():
            return session.run(None, {"images": xn})[0]

        diff = float(np.abs(run_onnx() - run_torch().numpy()).max())
        times = {"pytorch": [], "onnxruntime": []}
        fns = {"pytorch": run_torch, "onnxruntime": run_onnx}
        for r in range(args.warmup + args.rounds):
            for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t = time.perf_counter()
                fns[name]()
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - t)
    ratios = [o / t for o, t in zip(times["onnxruntime"], times["pytorch"])]
    result = {
        "config": os.path.relpath(args.config_file, REPO), "size": args.size, "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
        "machine": machine_note(args.threads), "export_seconds": round(export_s, 1), "export_check_max_abs_diff": check["max_abs_diff"], "max_abs_diff": diff,
        "pytorch_ms_median": round(1000 * median(times["pytorch"]), 2), "onnxruntime_ms_median": round(1000 * median(times["onnxruntime"]), 2),
        "onnx_over_pytorch_median": round(median(ratios), 3), "onnx_over_pytorch_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "torch": torch.__version__, "onnxruntime": ort.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
