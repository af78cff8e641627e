"""PNG plots of a training / evaluation output folder.

    simformer-plot output/synthetic/maskformer_R18_weakshot            # writes <folder>/plots/*.png
    python -m simformer.tools.plot OUTPUT_DIR [--out DIR] [--dataset NAME]

Reads ``metrics.json`` (detectron2's JSON-lines log: per-iteration records with ``total_loss``, the loss
terms and ``lr``; evaluation records with ``sem_seg/mIoU`` etc., ``<dataset>/sem_seg/...`` when several
test sets are evaluated) and the last ``inference/<dataset>/sem_seg_evaluation.pth`` of each dataset.
Writes, for what is there:

    losses.png                   total loss and the loss terms (last decoder layer) over iterations
    lr.png                       learning rate over iterations
    eval_metrics.png             mIoU (base / novel / hIoU for weak-shot data), fwIoU, mACC, pACC per evaluation
    per_class_iou_<dataset>.png  per-class IoU bars; base and novel classes in different colours

Records repeated after ``--resume`` count once (the last one). Base / novel classes come from the
dataset's registered metadata (``base_class_ids`` / ``novel_class_ids``); ``--dataset`` names it when
the folder does not say. TensorBoard event files (``events.out.tfevents.*``) are written by
detectron2's trainer next to ``metrics.json``: ``tensorboard --logdir OUTPUT_DIR`` shows the same curves.
"""
import argparse
import glob
import json
import logging
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["read_metrics", "read_class_iou", "bar_colors", "write_plots", "main"]

logger = logging.getLogger("simformer.plot")

_AUX = re.compile(r"_\d+$")  # deep-supervision terms: loss_ce_0, loss_dice_3, ...
_SUMMARY = ("mIoU", "mIoU_base", "mIoU_novel", "hIoU", "fwIoU", "mACC", "pACC")
BASE_COLOR, NOVEL_COLOR, OTHER_COLOR = "#1f77b4", "#ff7f0e", "#7f7f7f"


def read_metrics(path: str) -> Tuple[Dict[str, Dict[int, float]], Dict[str, Dict[str, Dict[int, float]]]]:
    """``metrics.json`` -> (training series ``{key: {iteration: value}}`` for losses / lr / times,
    evaluation series ``{dataset or "": {metric: {iteration: value}}}``). Later records of an iteration
    replace earlier ones (a resumed run logs them again); unreadable lines are skipped with a warning."""
    train: Dict[str, Dict[int, float]] = {}
    evals: Dict[str, Dict[str, Dict[int, float]]] = {}
    bad = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                it = int(rec["iteration"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            for key, value in rec.items():
                if key == "iteration" or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if "/" in key:  # evaluation result, flattened by detectron2: [<dataset>/]<task>/<metric>
                    parts = key.split("/")
                    dataset = "/".join(parts[:-2]) if len(parts) > 2 else ""
                    evals.setdefault(dataset, {}).setdefault(parts[-1], {})[it] = float(value)
                else:
                    train.setdefault(key, {})[it] = float(value)
    if bad:
        logger.warning(f"{path}: skipped {bad} unreadable line(s)")
    return train, evals


def read_class_iou(metrics: Dict[str, float]) -> Dict[str, float]:
    """``{"IoU-<class>": v}`` (in stored order) -> ``{class: v}``."""
    return {k[len("IoU-"):]: float(v) for k, v in metrics.items() if k.startswith("IoU-")}


def _dataset_meta(name: Optional[str]):
    """Registered metadata of ``name`` (importing simformer registers the built-in datasets), or None."""
    if not name:
        return None
    try:
        import simformer  # noqa: F401
        from detectron2.data import DatasetCatalog, MetadataCatalog

        if name in DatasetCatalog.list():
            return MetadataCatalog.get(name)
    except Exception as e:  # plotting must not fail for want of metadata
        logger.warning(f"no metadata for {name!r}: {e}")
    return None


def _config_test_datasets(output_dir: str) -> List[str]:
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return []
    try:
        import yaml

        with open(path) as f:
            cfg = yaml.safe_load(f)
        return list(cfg.get("DATASETS", {}).get("TEST", []) or [])
    except Exception:
        return []


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    pad = np.concatenate([np.full(window // 2, y[0]), y, np.full(window - 1 - window // 2, y[-1])])
    return np.convolve(pad, kernel, mode="valid")


def _series(d: Dict[int, float]):
    its = np.array(sorted(d))
    return its, np.array([d[i] for i in its])


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, 1, r + 1) for r in range(rows)]
    return fig, axes


def plot_losses(train: Dict[str, Dict[int, float]], path: str, title: str = "") -> Optional[str]:
    terms = sorted(k for k in train if k.startswith("loss") and not _AUX.search(k))
    aux = sorted(k for k in train if k.startswith("loss") and _AUX.search(k))
    if "total_loss" not in train and not terms:
        return None
    panels = (["total_loss"] if "total_loss" in train else []) + (["terms"] if terms else [])
    fig, axes = _figure(9, 3.2 * len(panels), len(panels))
    for ax, panel in zip(axes, panels):
        keys = ["total_loss"] if panel == "total_loss" else terms
        for i, key in enumerate(keys):
            its, y = _series(train[key])
            color = f"C{i % 10}"
            window = max(1, len(y) // 30)
            if window > 1:
                ax.plot(its, y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(its, _smooth(y, window), color=color, linewidth=1.6, label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if panel == "total_loss":
            ax.set_title((title + ": " if title else "") + "total loss (weighted sum of all terms)")
        else:
            note = f"; {len(aux)} auxiliary terms loss_*_N not shown" if aux else ""
            ax.set_title(f"loss terms (weighted), last decoder layer{note}")
            ax.legend(fontsize=8, ncol=min(4, len(keys)))
    fig.savefig(path)
    return path


def plot_lr(train: Dict[str, Dict[int, float]], path: str, title: str = "") -> Optional[str]:
    keys = sorted(k for k in train if k == "lr" or k.startswith("lr_") or k.endswith("/lr"))
    if not keys:
        return None
    fig, (ax,) = _figure(9, 3.2)
    for key in keys:
        ax.plot(*_series(train[key]), label=key, linewidth=1.6)
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.set_title((title + ": " if title else "") + "learning rate (base parameter group)")
    if len(keys) > 1:
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def plot_eval(evals: Dict[str, Dict[str, Dict[int, float]]], path: str, title: str = "", max_iter: Optional[int] = None) -> Optional[str]:
    datasets = [d for d in evals if any(m in evals[d] for m in _SUMMARY)]
    if not datasets:
        return None
    fig, axes = _figure(10, 3.4 * len(datasets), len(datasets))
    last = max([max(v) for d in datasets for v in evals[d].values() if v] + [max_iter or 0])
    for ax, ds in zip(axes, datasets):
        n_points = 0
        for i, m in enumerate(_SUMMARY):
            if m not in evals[ds]:
                continue
            its, y = _series(evals[ds][m])
            n_points = max(n_points, len(its))
            style = "-" if m in ("mIoU", "mIoU_base", "mIoU_novel", "hIoU") else "--"
            ax.plot(its, y, style, marker="o", color=f"C{i}", label=f"{m} {y[-1]:.1f}", linewidth=1.6)
        ax.set_xlabel("iteration")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_xlim(0, max(1, last) * 1.04)  # the whole run, even with a single (final) evaluation
        ax.grid(alpha=0.3)
        what = ds or "test set"
        ax.set_title((title + ": " if title else "") + f"evaluation on {what} ({n_points} evaluation{'s' if n_points != 1 else ''}; legend: last value)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path)
    return path


def bar_colors(names: Sequence[str], class_names: Optional[Sequence[str]], groups: Optional[Dict[str, List[int]]]) -> List[str]:
    """Bar colour per class name: novel orange, base blue (grey for classes in neither group); all blue
    without groups."""
    if not groups or not class_names:
        return [BASE_COLOR] * len(names)
    novel = {class_names[i] for i in groups.get("novel", []) if i < len(class_names)}
    base = {class_names[i] for i in groups.get("base", []) if i < len(class_names)}
    return [NOVEL_COLOR if n in novel else BASE_COLOR if n in base else OTHER_COLOR for n in names]


def plot_class_iou(iou: Dict[str, float], path: str, groups: Optional[Dict[str, List[int]]] = None, class_names: Optional[Sequence[str]] = None, summary: Optional[Dict[str, float]] = None, title: str = "") -> str:
    """Per-class IoU bars in class order; base / novel coloured apart when ``groups`` is given."""
    names = [n for n in (class_names or []) if n in iou] + [n for n in iou if n not in set(class_names or [])]
    colors = bar_colors(names, class_names, groups)
    values = np.array([iou[n] for n in names], dtype=float)
    values = np.nan_to_num(values, nan=0.0)
    fig, (ax,) = _figure(max(7.0, 0.32 * len(names) + 2), 4.2)
    x = np.arange(len(names))
    ax.bar(x, values, color=colors, edgecolor="black", linewidth=0.4)
    if len(names) <= 40:
        for xi, v in zip(x, values):
            ax.text(xi, v + 1, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60 if len(names) > 12 else 35, ha="right", fontsize=8 if len(names) <= 60 else 5)
    ax.set_ylim(0, 105)
    ax.set_ylabel("IoU (%)")
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    summary = summary or {}
    handles = []
    if groups:
        handles.append(Patch(color=BASE_COLOR, label="base" + (f" (mIoU {summary['mIoU_base']:.1f})" if "mIoU_base" in summary else "")))
        handles.append(Patch(color=NOVEL_COLOR, label="novel" + (f" (mIoU {summary['mIoU_novel']:.1f})" if "mIoU_novel" in summary else "")))
        for key, color in (("mIoU_base", BASE_COLOR), ("mIoU_novel", NOVEL_COLOR)):
            if key in summary:
                ax.axhline(summary[key], color=color, linestyle="--", linewidth=1)
    if "mIoU" in summary:
        ax.axhline(summary["mIoU"], color="black", linestyle=":", linewidth=1)
        handles.append(Patch(facecolor="white", edgecolor="black", linestyle=":", label=f"mIoU {summary['mIoU']:.1f}" + (f", hIoU {summary['hIoU']:.1f}" if "hIoU" in summary else "")))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title(title or "per-class IoU")
    fig.savefig(path)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "test"


def write_plots(output_dir: str, plot_dir: Optional[str] = None, dataset: Optional[str] = None) -> List[str]:
    """Write every plot that ``output_dir`` has data for into ``plot_dir`` (default ``<output_dir>/plots``);
    returns the paths written (empty when there is nothing to plot)."""
    plot_dir = plot_dir or os.path.join(output_dir, "plots")
    title = os.path.basename(os.path.normpath(output_dir))
    written: List[str] = []
    train, evals = {}, {}
    metrics_path = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        train, evals = read_metrics(metrics_path)
    test_sets = _config_test_datasets(output_dir)

    # per-class IoU: inference/<dataset>/sem_seg_evaluation.pth, else the last evaluation record
    class_results = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "inference", "*", "sem_seg_evaluation.pth")), key=os.path.getmtime):
        try:
            import torch

            metrics = torch.load(path, map_location="cpu", weights_only=False)
            class_results[os.path.basename(os.path.dirname(path))] = {k: float(v) for k, v in dict(metrics).items()}
        except Exception as e:
            logger.warning(f"cannot read {path}: {e}")
    for ds, series in evals.items():
        name = ds or dataset or (test_sets[0] if len(test_sets) == 1 else "")
        if name in class_results or not any(k.startswith("IoU-") for k in series):
            continue
        class_results[name or "test"] = {k: v[max(v)] for k, v in series.items()}
    if evals and "" in evals and (dataset or len(test_sets) == 1):  # name the single test set in titles
        evals = {(dataset or test_sets[0]): evals[""], **{k: v for k, v in evals.items() if k}}

    if not train and not evals and not class_results:
        return written
    os.makedirs(plot_dir, exist_ok=True)
    for fn, args in ((plot_losses, (train, os.path.join(plot_dir, "losses.png"), title)), (plot_lr, (train, os.path.join(plot_dir, "lr.png"), title)), (plot_eval, (evals, os.path.join(plot_dir, "eval_metrics.png"), title, max((max(v) for v in train.values() if v), default=None)))):
        p = fn(*args)
        if p:
            written.append(p)
    for ds, metrics in class_results.items():
        iou = read_class_iou(metrics)
        if not iou:
            continue
        meta = _dataset_meta(dataset or ds)
        names = list(meta.stuff_classes) if meta is not None and meta.get("stuff_classes", None) else None
        groups = {}
        if meta is not None:
            for g in ("base", "novel"):
                ids = meta.get(f"{g}_class_ids", None)
                if ids is not None:
                    groups[g] = [int(i) for i in ids]
        if not groups and ("mIoU_novel" in metrics):
            logger.warning(f"{ds}: base / novel metrics present but the dataset's class split is unknown (not registered?): bars in one colour; pass --dataset")
        p = plot_class_iou(iou, os.path.join(plot_dir, f"per_class_iou_{_safe(ds)}.png"), groups, names, metrics, f"{title}: per-class IoU on {ds}")
        written.append(p)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="simformer-plot", description="PNG plots (losses, learning rate, evaluation metrics, per-class IoU) of a training output folder.")
    p.add_argument("output_dir", help="a training / evaluation OUTPUT_DIR (with metrics.json and/or inference/*/sem_seg_evaluation.pth)")
    p.add_argument("--out", default=None, help="where to write the PNGs (default OUTPUT_DIR/plots)")
    p.add_argument("--dataset", default=None, help="registered dataset name for class names and the base / novel split, when the folder does not say")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not os.path.isdir(args.output_dir):
        print(f"error: {args.output_dir} is not a folder", file=sys.stderr)
        return 2
    paths = write_plots(args.output_dir, args.out, args.dataset)
    if not paths:
        print(f"error: nothing to plot in {args.output_dir} (no metrics.json, no inference/*/sem_seg_evaluation.pth)", file=sys.stderr)
        return 1
    print(f"Wrote {len(paths)} plots to {os.path.dirname(paths[0])}:")
    for path in paths:
        print(f"  {os.path.basename(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
