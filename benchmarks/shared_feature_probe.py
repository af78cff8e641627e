#!/usr/bin/env python
"""Linear probe on the second synthetic dataset: are the 12 classes (objects = shape x texture) linearly
readable from a trained model's pixel-decoder output (``mask_features``)?

    python benchmarks/shared_feature_probe.py RUN_DIR WEIGHTS [--feature mask_features|res2|res3|res4|res5]

Features of every synthetic_shared train / val image at 1/4 resolution (labels nearest-downsampled,
ignore dropped), standardised with the train statistics; a linear classifier (Adam, 600 steps of 8,192
pixels, seed 0) trained on the train pixels. Printed: pixel accuracy, and of the val object pixels the share
read right and the share read as the right texture but the wrong shape. Works for any head whose pixel
decoder has ``forward_features`` (MaskFormerHead, PerPixelBaselineHead).
"""
import sys, json, torch, numpy as np
import simformer
from detectron2.config import get_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.data import DatasetCatalog
from simformer import add_simformer_config
from simformer.data.image_io import read_image_file, read_label_file
from torch.nn import functional as F
torch.manual_seed(0)
import argparse
parser = argparse.ArgumentParser(description="linear probe of a model's features on synthetic_shared")
parser.add_argument("run"); parser.add_argument("weights")
parser.add_argument("--feature", default="mask_features", help="mask_features (pixel-decoder output) or a backbone level res2..res5")
args = parser.parse_args()
run, weights = args.run, args.weights
cfg = get_cfg(); add_simformer_config(cfg); cfg.set_new_allowed(True); cfg.merge_from_file(run + "/config.yaml"); cfg.MODEL.WEIGHTS = weights; cfg.freeze()
model = build_model(cfg); DetectionCheckpointer(model).load(weights); model.eval()
def feats(split):
    X, Y = [], []
    for d in DatasetCatalog.get(split):
        img = torch.as_tensor(np.ascontiguousarray(read_image_file(d["file_name"], "RGB").transpose(2, 0, 1))).float()
        lab = torch.as_tensor(read_label_file(d["sem_seg_file_name"]).astype(np.int64))
        x = ((img - model.pixel_mean.cpu()) / model.pixel_std.cpu())[None]
        with torch.no_grad():
            levels = model.backbone(x)
            f = (model.sem_seg_head.pixel_decoder.forward_features(levels)[0] if args.feature == "mask_features" else levels[args.feature])[0]  # (C, h, w)
        y = F.interpolate(lab[None, None].float(), size=f.shape[-2:], mode="nearest")[0, 0].long()
        X.append(f.flatten(1).T); Y.append(y.flatten())
    return torch.cat(X), torch.cat(Y)
Xtr, Ytr = feats("synthetic_shared_train"); Xva, Yva = feats("synthetic_shared_val")
keep = Ytr != 255; Xtr, Ytr = Xtr[keep], Ytr[keep]; keepv = Yva != 255; Xva, Yva = Xva[keepv], Yva[keepv]
mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6; Xtr = (Xtr - mu) / sd; Xva = (Xva - mu) / sd
lin = torch.nn.Linear(Xtr.shape[1], 12); opt = torch.optim.Adam(lin.parameters(), 1e-2)
for it in range(600):
    idx = torch.randint(0, len(Xtr), (8192,))
    loss = F.cross_entropy(lin(Xtr[idx]), Ytr[idx]); opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    ptr = lin(Xtr).argmax(1); pva = lin(Xva).argmax(1)
obj = Yva >= 3
shape = lambda c: (c - 3) // 3; tex = lambda c: (c - 3) % 3
def share(p, y):
    o = y >= 3
    po, yo = p[o], y[o]
    right = (po == yo).float().mean().item()
    isobj = po >= 3
    wrong_shape = (isobj & (po != yo) & (tex(po) == tex(yo))).float().mean().item()
    return round(100 * right, 1), round(100 * wrong_shape, 1)
print(run.split("/")[-2] + "/" + run.split("/")[-1], args.feature, Xtr.shape[1], "channels,", "| train pixel acc %.1f val %.1f" % (100 * (ptr == Ytr).float().mean(), 100 * (pva == Yva).float().mean()),
      "| val object pixels right / right-texture-wrong-shape:", share(pva, Yva), "| train objects:", share(ptr, Ytr))
