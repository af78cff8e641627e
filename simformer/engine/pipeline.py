"""The whole weak-shot pipeline of one split as one command (spec §5.6):

    stage 1 (seg or seg+crosim) -> evaluate -> pseudo-labels of the training split -> retraining -> evaluate

Every stage runs ``train_net.py`` in a subprocess (so ``--num-gpus`` and detectron2's launcher work as
usual) with its output under one run folder::

    <run>/stage1/          training run of the stage-1 config (model_final.pth, inference/<test>/...)
    <run>/pseudo_labels/   one PNG per training image + pseudo_labels.json (quality, coverage)
    <run>/retrain/         training run of the retraining config on those pseudo-labels
    <run>/summary.md, summary.json

A stage whose output exists is skipped; an interrupted training stage resumes from its last checkpoint.
"""
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from ..evaluation.pseudo_labels import SUMMARY_FILE

__all__ = ["run_pipeline", "format_summary", "stage_metrics"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRIC_KEYS = ("mIoU", "mIoU_base", "mIoU_novel", "hIoU")


def _load_cfg(config_file, opts):
    from detectron2.config import get_cfg

    from ..config import add_simformer_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def stage_metrics(output_dir: str, test_name: str) -> Optional[Dict[str, float]]:
    """Metrics saved by the evaluator of a training run, or None when not evaluated yet."""
    path = os.path.join(output_dir, "inference", test_name, "sem_seg_evaluation.pth")
    if not os.path.isfile(path):
        return None
    return {k: float(v) for k, v in torch.load(path, weights_only=False).items() if not k.startswith(("IoU-", "ACC-"))}


def format_summary(rows: List[Dict]) -> str:
    """Markdown table of the stages: name, mIoU, base, novel, hIoU, minutes."""
    lines = ["| stage | mIoU | base mIoU | novel mIoU | hIoU | minutes |", "|---|---|---|---|---|---|"]
    for r in rows:
        m = r.get("metrics") or {}
        cells = [f"{m[k]:.1f}" if k in m else "-" for k in METRIC_KEYS]
        minutes = f"{r['seconds'] / 60:.1f}" if r.get("seconds") is not None else "skipped"
        lines.append(f"| {r['stage']} | " + " | ".join(cells) + f" | {minutes} |")
    return "\n".join(lines)


def _run(cmd, log):
    log(f"$ {' '.join(cmd)}")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start


def run_pipeline(stage1_config: str, retrain_config: str, run_dir: str, num_gpus: int = 1, opts=(), train_script=None, python=sys.executable, log=print):
    """Run (or finish) the pipeline; returns the summary rows. ``opts`` are KEY VALUE overrides applied to
    every stage (e.g. ``SOLVER.MAX_ITER 100``). ``train_script``: a script with train_net.py's command line
    (default: train_net.py), e.g. one that registers the user's own weak-shot dataset first."""
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    opts = list(opts)
    cfg1 = _load_cfg(stage1_config, opts)
    cfg2 = _load_cfg(retrain_config, opts)
    if len(cfg1.DATASETS.TRAIN) != 1:
        raise ValueError(f"{stage1_config}: the pipeline needs one training split in DATASETS.TRAIN, got {tuple(cfg1.DATASETS.TRAIN)}")
    if not cfg2.INPUT.WEAKSHOT.NOVEL_HAS_MASK:
        raise ValueError(f"{retrain_config}: a retraining config needs INPUT.WEAKSHOT.NOVEL_HAS_MASK True (novel pseudo-labels as mask targets)")
    train_name, test_name = cfg1.DATASETS.TRAIN[0], cfg1.DATASETS.TEST[0]
    if tuple(cfg2.DATASETS.TRAIN) != (train_name,):
        raise ValueError(f"{retrain_config}: retrains on {tuple(cfg2.DATASETS.TRAIN)} but stage 1 trained on {train_name!r}")
    base = [python, train_script or os.path.join(REPO, "train_net.py"), "--num-gpus", str(num_gpus)]
    dirs = {k: os.path.join(run_dir, k) for k in ("stage1", "pseudo_labels", "retrain")}
    rows, t0 = [], time.perf_counter()

    def train_stage(name, config, out, extra):
        seconds = None
        final = os.path.join(out, "model_final.pth")
        if not os.path.isfile(final):
            log(f"==> [{name}] training {config} -> {out}")
            seconds = _run(base + ["--config-file", config, "--resume"] + opts + extra + ["OUTPUT_DIR", out], log)
        else:
            log(f"==> [{name}] {final} exists: training skipped")
        metrics = stage_metrics(out, test_name)
        if metrics is None:
            log(f"==> [{name}] evaluating {final}")
            s = _run(base + ["--config-file", config, "--eval-only"] + opts + extra + ["MODEL.WEIGHTS", final, "OUTPUT_DIR", out], log)
            seconds = (seconds or 0.0) + s
            metrics = stage_metrics(out, test_name)
        rows.append({"stage": name, "metrics": metrics, "seconds": seconds})
        log(f"==> [{name}] done ({(time.perf_counter() - t0) / 60:.1f} min into the pipeline)")
        return final

    final1 = train_stage("stage 1: " + os.path.splitext(os.path.basename(stage1_config))[0], stage1_config, dirs["stage1"], [])

    summary_file = os.path.join(dirs["pseudo_labels"], SUMMARY_FILE)
    seconds = None
    if not os.path.isfile(summary_file):
        log(f"==> [pseudo-labels] predicting {train_name} with {final1} -> {dirs['pseudo_labels']}")
        seconds = _run(
            base + ["--config-file", stage1_config, "--eval-only"] + opts + [
                "MODEL.WEIGHTS", final1, "DATASETS.TEST", f"('{train_name}',)", "TEST.PSEUDO_LABEL_DIR", dirs["pseudo_labels"],
                "TEST.NUM_VIS_OVERLAYS", "0", "OUTPUT_DIR", os.path.join(run_dir, "pseudo_label_log"),
            ],
            log,
        )  # fmt: skip
    else:
        log(f"==> [pseudo-labels] {summary_file} exists: skipped")
    with open(summary_file) as f:
        pseudo = json.load(f)
    quality = {k[len("quality_"):]: v for k, v in pseudo.items() if k.startswith("quality_")}
    rows.append({"stage": f"pseudo-labels ({pseudo['num_images']} images, {pseudo['labelled_fraction']:.0f}% labelled)", "metrics": quality, "seconds": seconds})

    train_stage("retraining: " + os.path.splitext(os.path.basename(retrain_config))[0], retrain_config, dirs["retrain"], ["INPUT.WEAKSHOT.PSEUDO_LABEL_DIR", dirs["pseudo_labels"]])

    table = format_summary(rows)
    note = f"Split {train_name} -> evaluated on {test_name}; the pseudo-label row scores the pseudo-labels against the training labels."
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(table + "\n\n" + note + "\n")
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    log("\n" + table + "\n" + note)
    log(f"==> pipeline finished in {(time.perf_counter() - t0) / 60:.1f} min; summary in {run_dir}/summary.md")
    for stage in ("stage1", "retrain"):
        for what in ("overlays", "plots"):
            path = os.path.join(dirs[stage], what)
            if os.path.isdir(path):
                log(f"    {stage} {what}: {path}")
    return rows
