#!/usr/bin/env python
"""Is SimNet a good teacher on novel pixels? Its same-class prediction on held-out pixel pairs of two
validation images, by pair kind, for a trained pixel-pixel transfer (``seg_crosim``) model:

    python benchmarks/weakshot_diagnostics.py --config-file configs/synthetic/simformer/seg_crosim.yaml \
        --weights output/ablation/pipeline_crosim/seed1/stage1/model_final.pth [--pairs 60] [--points 64]

For consecutive validation images (A, B) it samples ``--points`` pixels of each kind (base, novel, no class:
label 255) per image from the full labels, reads the detached pixel-decoder features there, and scores all
A x B pairs with SimNet. Per pair kind it reports the AUC of "same class" (base-base, novel-novel, and over
all labelled pairs), the mean predicted similarity of same- and different-class pairs, and for the pairs
the distillation actually uses (novel or no-class pixels on both sides) how often SimNet calls a
novel-vs-no-class pair similar. Writes ``benchmarks/results/weakshot_diagnostics.json`` (``--output``).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import simformer  # noqa: E402,F401
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from simformer.data.dataset_mappers.sem_seg_mapper import SemSegTestMapper  # noqa: E402
from simformer.data.image_io import read_label_file  # noqa: E402
from simformer.engine.checkpoint import AtomicCheckpointer  # noqa: E402
from simformer.engine.pipeline import _load_cfg  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("base", "novel", "none")


def auc(scores, labels):
    """Area under the ROC curve (Mann-Whitney U with mid-ranks); NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # mid-ranks of ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _features(model, x):
    images = model.preprocess_image([x])
    mask_features, _, _ = model.sem_seg_head.pixel_decoder.forward_features(model.backbone(images.tensor))
    return mask_features[0]  # (C, h, w) of the padded image


def pair_sharing(cfg, seed, draws=4000):
    """How often the training pair sampler (INPUT.WEAKSHOT.PAIR_TYPE) gives two images that share a novel
    class (image-level tags): the distillation term exists only for those pairs; and how often the focus
    image has a novel class at all."""
    from simformer.data.dataset_mappers import build_mapper

    pair_mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    rng = np.random.default_rng(seed)
    focus = rng.integers(0, len(dicts), draws)
    shared = tagged = 0
    for i in focus:
        j = pair_mapper.pair_table.sample_partner(int(i), pair_mapper.pair_type, rng)
        a, b = set(dicts[i]["novel_tags"]), set(dicts[j]["novel_tags"])
        tagged += bool(a)
        shared += bool(a & b)
    return {"pair_type": cfg.INPUT.WEAKSHOT.PAIR_TYPE, "draws": draws, "focus_has_a_novel_class": round(tagged / draws, 4),
            "pair_shares_a_novel_class": round(shared / draws, 4)}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--pairs", type=int, default=60, help="image pairs (consecutive validation images)")
    parser.add_argument("--points", type=int, default=64, help="points of each kind per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results", "weakshot_diagnostics.json"))
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cfg = _load_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    AtomicCheckpointer(model, strict_shapes=True).load(args.weights, checkpointables=[])
    simnet = model.criterion.terms["cross_image"].simnet
    if simnet is None:
        raise SystemExit(f"{args.config_file}: no SimNet (MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT is 0)")
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    novel = np.zeros(256, bool)
    novel[meta.novel_class_ids] = True
    dicts = DatasetCatalog.get(name)[: 2 * args.pairs]
    mapper = SemSegTestMapper(cfg)
    rng = np.random.default_rng(args.seed)
    scores, same, kind_a, kind_b = [], [], [], []
    with torch.no_grad():
        for a, b in zip(dicts[0::2], dicts[1::2]):
            pts = []
            for d in (a, b):
                x = mapper(d)
                feats = _features(model, x)
                label = torch.from_numpy(read_label_file(d["sem_seg_file_name"]))[None, None].float()
                h, w = x["image"].shape[-2:]
                fh, fw = feats.shape[-2:]
                # labels at the feature grid (nearest) of the padded input; padding = -1
                lab = F.interpolate(label, size=(h, w), mode="nearest")
                lab = F.pad(lab, (0, 4 * fw - w, 0, 4 * fh - h), value=-1)
                lab = F.interpolate(lab, size=(fh, fw), mode="nearest")[0, 0].long()
                kind = torch.full_like(lab, -1)
                valid = lab >= 0
                kind[valid & (lab == 255)] = 2
                lab_c = lab.clamp(0, 255)
                kind[valid & (lab != 255) & torch.from_numpy(novel)[lab_c]] = 1
                kind[valid & (lab != 255) & ~torch.from_numpy(novel)[lab_c]] = 0
                sel = []
                for k in range(3):
                    where = torch.nonzero(kind.flatten() == k)[:, 0].numpy()
                    if len(where):
                        sel.append(rng.choice(where, size=min(args.points, len(where)), replace=False))
                sel = np.concatenate(sel) if sel else np.zeros(0, np.int64)
                pts.append((feats.flatten(1)[:, sel].T, lab.flatten()[sel].numpy(), kind.flatten()[sel].numpy()))
            (fa, la, ka), (fb, lb, kb) = pts
            if len(la) == 0 or len(lb) == 0:
                continue
            n = min(len(la), len(lb))  # SimNet scores K x K pairs of equal-size sets
            fa, la, ka, fb, lb, kb = fa[:n], la[:n], ka[:n], fb[:n], lb[:n], kb[:n]
            prob = torch.sigmoid(simnet(fa[None].float(), fb[None].float()))[0].numpy()  # (n, n)
            scores.append(prob.ravel())
            same.append((la[:, None] == lb[None, :]).ravel())
            kind_a.append(np.repeat(ka, n))
            kind_b.append(np.tile(kb, n))
    scores, same, ka, kb = (np.concatenate(v) for v in (scores, same, kind_a, kind_b))
    result = {"config": os.path.relpath(os.path.abspath(args.config_file), REPO), "weights": args.weights, "pairs_of_images": args.pairs,
              "points_per_kind": args.points, "kinds": {}}  # fmt: skip

    def stats(mask, label):
        s, y = scores[mask], same[mask] & (ka[mask] != 2)
        return {"pairs": int(mask.sum()), "auc": None if np.isnan(auc(s, y)) else round(auc(s, y), 4), "mean_similarity_same": round(float(s[y].mean()), 4) if y.any() else None,
                "mean_similarity_different": round(float(s[~y].mean()), 4) if (~y).any() else None, "label": label}  # fmt: skip

    pair_kind = lambda x, y: ((ka == x) & (kb == y)) | ((ka == y) & (kb == x))  # noqa: E731
    result["kinds"]["base-base"] = stats(pair_kind(0, 0), "what SimNet is trained on (held-out images)")
    result["kinds"]["novel-novel"] = stats(pair_kind(1, 1), "what the distillation needs")
    result["kinds"]["novel-base"] = stats(pair_kind(1, 0), "all different: mean similarity should be low")
    result["kinds"]["novel-none"] = stats(pair_kind(1, 2), "no-class vs novel: all different")
    result["kinds"]["none-none"] = stats(pair_kind(2, 2), "no-class pairs (label 255 on both: 'same' is not defined)")
    distill = (ka != 0) & (kb != 0)
    labelled = (ka != 2) & (kb != 2)
    result["kinds"]["all labelled"] = stats(labelled, "every pair of labelled pixels")
    d = distill & ((ka == 2) | (kb == 2)) & ~((ka == 2) & (kb == 2))
    result["distill_region"] = {
        "share_of_novel_none_pairs_among_distill_pairs": round(float(d.sum() / max(distill.sum(), 1)), 4),
        "novel_none_called_similar (p > 0.5)": round(float((scores[d] > 0.5).mean()), 4) if d.any() else None,
    }
    result["training_pairs"] = pair_sharing(cfg, args.seed)
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
