#!/usr/bin/env python
"""Where a masked-attention model's class predictions come from: the query's identity or the image.

    python benchmarks/query_specialisation.py RUN_DIR [--weights FILE] [--dataset synthetic_shared_ws_val]
                                              [--max-images 120] [--json OUT]

The initial prediction P_0 of the masked-attention decoder is made from the learned query features alone
(before any attention to the image), so its class scores are the same for every image. Measured:

* the training class loss of P_0 and of the final layer (``metrics.json``, mean of the last 100
  iterations): if P_0's is as low as the final one, the decoder layers add nothing to classification;
* on the dataset's images, over the queries that predict a class with probability > 0.5:
  ``identity_agreement``, the share whose class is the one P_0 gives that query (the same for every
  image), and ``purity``, the share of each query's confident predictions that fall on its most frequent
  class (weighted by count). Both near 100 % mean that each query stands for one class and the image
  only decides *where* (through the mask), not *what*: the classifier never learnt to read the class from
  the attended features.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def specialisation(final_probs: np.ndarray, initial_probs: np.ndarray, threshold: float = 0.5) -> dict:
    """``final_probs`` (N, Q, K+1) class probabilities of the final layer on N images (last = no object),
    ``initial_probs`` (Q, K+1) those of P_0. Returns ``confident`` (count), ``identity_agreement`` and
    ``purity`` (%, see the module docstring; NaN without confident predictions)."""
    real = final_probs[..., :-1]
    conf = real.max(-1) > threshold  # (N, Q)
    cls = real.argmax(-1)  # (N, Q)
    p0_cls = initial_probs[:, :-1].argmax(-1)  # (Q,)
    n = int(conf.sum())
    if n == 0:
        return {"confident": 0, "identity_agreement": float("nan"), "purity": float("nan")}
    agree = (cls == p0_cls[None])[conf].mean()
    top = 0
    for q in range(final_probs.shape[1]):
        counts = np.bincount(cls[conf[:, q], q], minlength=real.shape[-1])
        top += counts.max() if counts.size else 0
    return {"confident": n, "identity_agreement": round(100.0 * float(agree), 1), "purity": round(100.0 * top / n, 1)}


def class_losses(metrics_file: str, last: int = 100) -> dict:
    """Mean training class loss of P_0 (``loss_ce_0``) and of the final layer (``loss_ce``) over the last
    ``last`` logged iterations of a detectron2 ``metrics.json``."""
    rows = []
    with open(metrics_file) as f:
        for line in f:
            r = json.loads(line)
            if "loss_ce" in r and "loss_ce_0" in r:
                rows.append(r)
    if not rows:
        raise ValueError(f"{metrics_file}: no training rows with loss_ce and loss_ce_0 (not a masked-attention run with supervised P_0?)")
    end = rows[-1]["iteration"]
    tail = [r for r in rows if r["iteration"] > end - last]
    return {"iterations": [tail[0]["iteration"], end], "loss_ce_initial": round(float(np.mean([r["loss_ce_0"] for r in tail])), 3),
            "loss_ce_final": round(float(np.mean([r["loss_ce"] for r in tail])), 3)}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--weights", default="", help="checkpoint (default: RUN_DIR/model_final.pth)")
    parser.add_argument("--dataset", default="synthetic_shared_ws_val", help="registered dataset whose images are read")
    parser.add_argument("--max-images", type=int, default=120)
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    import torch
    from detectron2.data import DatasetCatalog

    import simformer.data.datasets  # noqa: F401  (registers the built-in datasets)
    from simformer.data.image_io import read_image_file
    from simformer.engine.predictor import Predictor
    from simformer.tools.predict import build_cfg

    cfg = build_cfg(os.path.join(args.run_dir, "config.yaml"), [])
    weights = args.weights or os.path.join(args.run_dir, "model_final.pth")
    predictor = Predictor(cfg, weights, device="cpu")
    head = predictor.model.sem_seg_head
    dec = head.predictor
    if not hasattr(dec, "query_feat"):
        raise ValueError(f"{args.run_dir}: the decoder ({type(dec).__name__}) has no learned initial query features; this measures masked-attention decoders")
    with torch.no_grad():
        initial = dec.class_embed(dec.decoder_norm(dec.query_feat.weight)).softmax(-1).numpy()
    captured = []
    hook = head.register_forward_hook(lambda m, i, out: captured.append(out["pred_logits"].softmax(-1).detach().numpy()))
    records = DatasetCatalog.get(args.dataset)[: args.max_images]
    for r in records:
        predictor([read_image_file(r["file_name"], "RGB")])
    hook.remove()
    final = np.concatenate(captured, 0)
    out = {"run_dir": args.run_dir, "weights": weights, "images": len(records), **specialisation(final, initial)}
    metrics = os.path.join(args.run_dir, "metrics.json")
    if os.path.isfile(metrics):
        out.update(class_losses(metrics))
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
