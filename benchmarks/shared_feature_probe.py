#!/usr/bin/env python
"""Linear probe on the second synthetic dataset: are the 12 classes (objects = shape x texture) linearly
readable from a trained model's features?

    python benchmarks/shared_feature_probe.py RUN_DIR WEIGHTS [--feature mask_features|res2|res3|res4|res5]

Features (``mask_features`` = the pixel-decoder output, or a backbone level) of every synthetic_shared
train / val image, labels nearest-downsampled to their resolution, ignore dropped, standardised with the
train statistics; a linear classifier (Adam, 600 steps of 8,192 pixels, seed 0) trained on the train
pixels. Printed: pixel accuracy, and of the object pixels the share read right and the share read as the
right texture but the wrong shape (``shared_confusion.object_pixel_groups``). Works for any head whose
pixel decoder has ``forward_features`` (MaskFormerHead, PerPixelBaselineHead).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from shared_confusion import object_pixel_groups  # noqa: E402
from simformer.data.datasets.synthetic_shared import SHARED_CLASSES  # noqa: E402
from simformer.data.image_io import read_image_file, read_label_file  # noqa: E402
from simformer.evaluation.confusion import confusion_matrix  # noqa: E402


def split_features(model, split: str, feature: str):
    """(N, C) features and (N,) labels of every labelled pixel of ``split`` at the feature's resolution."""
    from detectron2.data import DatasetCatalog

    xs, ys = [], []
    for d in DatasetCatalog.get(split):
        img = torch.as_tensor(np.ascontiguousarray(read_image_file(d["file_name"], "RGB").transpose(2, 0, 1))).float()
        label = torch.as_tensor(read_label_file(d["sem_seg_file_name"]).astype(np.int64))
        x = ((img - model.pixel_mean.cpu()) / model.pixel_std.cpu())[None]
        with torch.no_grad():
            levels = model.backbone(x)
            f = (model.sem_seg_head.pixel_decoder.forward_features(levels)[0] if feature == "mask_features" else levels[feature])[0]  # (C, h, w)
        y = F.interpolate(label[None, None].float(), size=f.shape[-2:], mode="nearest")[0, 0].long()
        xs.append(f.flatten(1).T)
        ys.append(y.flatten())
    x, y = torch.cat(xs), torch.cat(ys)
    keep = y != 255
    return x[keep], y[keep]


def fit_linear_probe(x, y, num_classes: int, steps: int = 600, batch: int = 8192, lr: float = 1e-2) -> torch.nn.Linear:
    probe = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(probe.parameters(), lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        loss = F.cross_entropy(probe(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


def object_shares(pred, label, k: int):
    """(% of object pixels right, % right texture but wrong shape)."""
    conf = confusion_matrix(pred.numpy(), label.numpy(), k, ignore_label=255)[:k, :k].T  # rows: ground truth
    groups = object_pixel_groups(conf)
    return groups["correct"], groups["same_texture_wrong_shape"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("weights")
    parser.add_argument("--feature", default="mask_features", help="mask_features (pixel-decoder output) or a backbone level res2..res5")
    args = parser.parse_args()
    torch.manual_seed(0)

    from simformer.engine.predictor import Predictor
    from simformer.tools.predict import build_cfg

    model = Predictor(build_cfg(os.path.join(args.run_dir, "config.yaml"), []), args.weights, device="cpu").model
    k = len(SHARED_CLASSES)
    x_train, y_train = split_features(model, "synthetic_shared_train", args.feature)
    x_val, y_val = split_features(model, "synthetic_shared_val", args.feature)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mu) / sd, (x_val - mu) / sd
    probe = fit_linear_probe(x_train, y_train, k)
    with torch.no_grad():
        p_train, p_val = probe(x_train).argmax(1), probe(x_val).argmax(1)
    print(f"{args.run_dir} {args.feature} {x_train.shape[1]} channels | train pixel acc {100 * (p_train == y_train).float().mean():.1f} "
          f"val {100 * (p_val == y_val).float().mean():.1f} | val object pixels right / right-texture-wrong-shape: "
          f"{object_shares(p_val, y_val, k)} | train objects: {object_shares(p_train, y_train, k)}")


if __name__ == "__main__":
    main()
