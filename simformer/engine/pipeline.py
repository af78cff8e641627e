"""The whole weak-shot pipeline of one split as one command (spec §5.6):

    stage 1 (seg or seg+crosim) -> evaluate -> pseudo-labels of the training split -> retraining -> evaluate

Every stage runs ``python -m simformer.tools.train`` (``train_net.py``'s command line, from the installed
package; or the user's ``--train-script``) in a subprocess (so ``--num-gpus`` and detectron2's launcher work as
usual) with its output under one run folder::

    <run>/stage1/          training run of the stage-1 config (model_final.pth, inference/<test>/...)
    <run>/pseudo_labels/   one PNG per training image + pseudo_labels.json (quality, coverage)
    <run>/retrain/         training run of the retraining config on those pseudo-labels
    <run>/summary.md, summary.json

Every stage records its identity next to its output (``stage.json``: a hash of the stage's resolved
config, its extra flags and the identity of the stage it builds on, plus the config itself). A re-run with
the same inputs skips a finished stage and resumes an interrupted one; a re-run with different inputs
(another config, other overrides, a retrained upstream stage) moves the old output aside to
``<stage>.stale-<time>``, says which keys changed, and runs the stage (and so everything downstream) again.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from ..utils.config_merge import merge_config
from ..evaluation.pseudo_labels import SUMMARY_FILE

__all__ = ["run_pipeline", "format_summary", "stage_metrics", "stage_identity", "prepare_stage_dir", "mark_stage_done", "follow_stage_dir", "distributed_flags", "STAGE_FILE"]

METRIC_KEYS = ("mIoU", "mIoU_base", "mIoU_novel", "hIoU")
STAGE_FILE = "stage.json"


def _load_cfg(config_file, opts):
    from detectron2.config import get_cfg

    from ..config import add_simformer_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    merge_config(cfg, config_file, list(opts))
    return cfg


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


VOLATILE_KEYS = ("OUTPUT_DIR", "INPUT.WEAKSHOT.PSEUDO_LABEL_DIR")


def stage_identity(config_file: str, opts=(), upstream: str = "", volatile=VOLATILE_KEYS) -> Dict:
    """``{"id": hex, "config": flat resolved config, "upstream": str}`` of one stage: the config file merged
    with ``opts`` (``volatile`` keys, e.g. the output folder, left out) and the identity of its input."""
    cfg = _load_cfg(config_file, opts)
    flat = {k: v for k, v in _flatten(json.loads(json.dumps(cfg, default=list))).items() if k not in volatile}
    blob = json.dumps({"config": flat, "upstream": upstream}, sort_keys=True, default=str)
    return {"id": hashlib.sha1(blob.encode()).hexdigest()[:16], "config": flat, "upstream": upstream}


def _diff(old: Dict, new: Dict, limit=8) -> str:
    a, b = old.get("config", {}), new.get("config", {})
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"... {len(keys) - limit} more")
    if old.get("upstream") != new.get("upstream"):
        parts.append(f"upstream stage {old.get('upstream') or '<none>'} -> {new.get('upstream') or '<none>'}")
    return "; ".join(parts) or "no recorded identity"


def prepare_stage_dir(out: str, identity: Dict, log=print) -> bool:
    """Make ``out`` hold this stage's output: returns True when it is already finished with the same
    identity (skip), False when the stage must run (a matching unfinished run resumes). An ``out`` made by
    other inputs (or with no ``stage.json``) is moved aside to ``<out>.stale-<time>``, never deleted."""
    path = os.path.join(out, STAGE_FILE)
    if os.path.isdir(out) and os.listdir(out):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if old.get("id") == identity["id"]:
            return bool(old.get("done"))
        stale = f"{out}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
        log(f"==> {out} was made by other inputs ({_diff(old, identity)}): moved to {stale}; running the stage again")
        shutil.move(out, stale)
    os.makedirs(out, exist_ok=True)
    _write_stage(path, dict(identity, done=False))
    return False


def follow_stage_dir(out: str, identity: Dict, log=print, timeout: float = 3600.0, poll: float = 2.0) -> bool:
    """On machines other than 0 of a multi-machine pipeline: wait until machine 0 has prepared ``out`` for
    this ``identity`` (its ``stage.json``), then skip (True) if it is finished, else run along (False)."""
    path = os.path.join(out, STAGE_FILE)
    deadline = time.time() + timeout
    while True:
        try:
            with open(path) as f:
                record = json.load(f)
            if record.get("id") == identity["id"]:
                return bool(record.get("done"))
        except (OSError, ValueError):
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{path}: machine 0 did not prepare this stage within {timeout:.0f} s (same pipeline command and shared file system on every machine?)")
        time.sleep(poll)


def distributed_flags(num_machines: int = 1, machine_rank: int = 0, dist_url: Optional[str] = None) -> List[str]:
    """detectron2's multi-machine flags for a stage command (none for one machine)."""
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(f"need num_machines >= 1 and 0 <= machine_rank < num_machines, got {num_machines}, {machine_rank}")
    if num_machines == 1:
        return []
    if not dist_url or dist_url == "auto":
        raise ValueError("several machines need --dist-url tcp://<machine 0>:<port>")
    return ["--num-machines", str(num_machines), "--machine-rank", str(machine_rank), "--dist-url", dist_url]


def mark_stage_done(out: str, identity: Dict, **extra):
    _write_stage(os.path.join(out, STAGE_FILE), dict(identity, done=True, **extra))


def _write_stage(path, record):
    from ..utils.atomic_io import atomic_write

    atomic_write(path, lambda f: json.dump(record, f, indent=1, default=str), mode="w")


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


def _run(cmd, log, log_file=None):
    log(f"$ {' '.join(cmd)}")
    start = time.perf_counter()
    if log_file:
        with open(log_file, "a") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    else:
        subprocess.run(cmd, check=True)
    return time.perf_counter() - start


RETRAIN_INITS = ("scratch", "stage1")


def run_pipeline(stage1_config: str, retrain_config: str, run_dir: str, num_gpus: int = 1, opts=(), train_script=None, python=sys.executable, log=print, retrain_init="scratch", log_file=None,
                 num_machines: int = 1, machine_rank: int = 0, dist_url: Optional[str] = None, pseudo_label_opts=()):
    """Run (or finish) the pipeline; returns the summary rows. ``opts`` are KEY VALUE overrides applied to
    every stage (e.g. ``SOLVER.MAX_ITER 100``). ``train_script``: a script with train_net.py's command line
    (default: ``python -m simformer.tools.train``), e.g. one that registers the user's own weak-shot dataset first.
    ``retrain_init``: ``"scratch"`` (the paper: a fresh model) or ``"stage1"`` (start from stage 1's weights).
    ``log_file``: append the stages' output there instead of the console. ``num_machines`` / ``machine_rank``
    / ``dist_url``: detectron2's multi-machine flags, passed to every stage; every machine runs the same
    pipeline command on a shared file system, machine 0 decides which stages run (``stage.json``) and the
    others follow it (:func:`follow_stage_dir`). ``pseudo_label_opts``: KEY VALUE overrides of the
    pseudo-label stage only (e.g. ``TEST.AUG.PSEUDO_LABELS True`` for test-time augmented pseudo-labels); they
    are part of that stage's identity, not of stage 1's."""
    if retrain_init not in RETRAIN_INITS:
        raise ValueError(f"retrain_init must be one of {RETRAIN_INITS}, got {retrain_init!r}")
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
    base = [python] + ([train_script] if train_script else ["-m", "simformer.tools.train"]) + ["--num-gpus", str(num_gpus)]
    base += distributed_flags(num_machines, machine_rank, dist_url)
    # machine 0 prepares and marks the stage folders; the others follow its decisions
    prepare = prepare_stage_dir if machine_rank == 0 else follow_stage_dir
    mark = mark_stage_done if machine_rank == 0 else (lambda out, identity, **extra: None)
    dirs = {k: os.path.join(run_dir, k) for k in ("stage1", "pseudo_labels", "retrain")}
    rows, t0 = [], time.perf_counter()

    def train_stage(name, config, out, extra, upstream=""):
        seconds = None
        final = os.path.join(out, "model_final.pth")
        identity = stage_identity(config, opts + extra, upstream)
        if not prepare(out, identity, log):
            log(f"==> [{name}] training {config} -> {out}")
            seconds = _run(base + ["--config-file", config, "--resume"] + opts + extra + ["OUTPUT_DIR", out], log, log_file)
            if stage_metrics(out, test_name) is None:
                log(f"==> [{name}] evaluating {final}")
                seconds += _run(base + ["--config-file", config, "--eval-only"] + opts + extra + ["MODEL.WEIGHTS", final, "OUTPUT_DIR", out], log, log_file)
            mark(out, identity)
        else:
            log(f"==> [{name}] finished before with the same inputs ({out}/{STAGE_FILE}): skipped")
        metrics = stage_metrics(out, test_name)
        rows.append({"stage": name, "metrics": metrics, "seconds": seconds})
        log(f"==> [{name}] done ({(time.perf_counter() - t0) / 60:.1f} min into the pipeline)")
        return final, identity["id"]

    final1, id1 = train_stage("stage 1: " + os.path.splitext(os.path.basename(stage1_config))[0], stage1_config, dirs["stage1"], [])

    summary_file = os.path.join(dirs["pseudo_labels"], SUMMARY_FILE)
    seconds = None
    pl_opts = opts + list(pseudo_label_opts) + ["DATASETS.TEST", f"('{train_name}',)", "TEST.NUM_VIS_OVERLAYS", "0"]
    pl_identity = stage_identity(stage1_config, pl_opts, upstream=id1, volatile=VOLATILE_KEYS + ("MODEL.WEIGHTS", "TEST.PSEUDO_LABEL_DIR"))
    if not prepare(dirs["pseudo_labels"], pl_identity, log):
        log(f"==> [pseudo-labels] predicting {train_name} with {final1} -> {dirs['pseudo_labels']}")
        seconds = _run(
            base + ["--config-file", stage1_config, "--eval-only"] + pl_opts + [
                "MODEL.WEIGHTS", final1, "TEST.PSEUDO_LABEL_DIR", dirs["pseudo_labels"],
                "OUTPUT_DIR", os.path.join(run_dir, "pseudo_label_log"),
            ],
            log, log_file,
        )  # fmt: skip
        mark(dirs["pseudo_labels"], pl_identity)
    else:
        log(f"==> [pseudo-labels] made before with the same inputs ({dirs['pseudo_labels']}/{STAGE_FILE}): skipped")
    with open(summary_file) as f:
        pseudo = json.load(f)
    quality = {k[len("quality_"):]: v for k, v in pseudo.items() if k.startswith("quality_")}
    rows.append({"stage": f"pseudo-labels ({pseudo['num_images']} images, {pseudo['labelled_fraction']:.0f}% labelled)", "metrics": quality, "seconds": seconds})

    retrain_extra = ["INPUT.WEAKSHOT.PSEUDO_LABEL_DIR", dirs["pseudo_labels"]]
    if retrain_init == "stage1":
        retrain_extra += ["MODEL.WEIGHTS", final1]
    train_stage("retraining: " + os.path.splitext(os.path.basename(retrain_config))[0], retrain_config, dirs["retrain"], retrain_extra,
                upstream=pl_identity["id"] + (f"+init:{id1}" if retrain_init == "stage1" else ""))

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
