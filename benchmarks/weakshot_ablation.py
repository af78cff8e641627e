#!/usr/bin/env python
"""The weak-shot ablation on the synthetic split, every row on several seeds, in one command:

    python benchmarks/weakshot_ablation.py [--seeds 1 2 3] [--jobs 2] [--rows oracle,seg,...]
                                           [--dataset synthetic_ws|synthetic_shared_ws]
                                           [--output-dir output/ablation] [KEY VALUE ...]

Rows (one model and schedule for all: configs/synthetic/simformer/Base-simformer-synthetic.yaml):

  oracle        novel classes with pixel labels (the upper bound)               oracle.yaml
  oracle_long   the oracle with 1,500 iterations (= stage 1 + warm retraining)  oracle_long.yaml
  base_only     novel classes unseen                                             base_only.yaml
  no_comp       proposal-pixel transfer (novel matched by class score)           seg_no_comp.yaml
  seg           + complementary loss                                              seg.yaml
  crosim        + pixel-pixel similarity transfer                                 seg_crosim.yaml
  ssa           seg + SSA as the pixel classification layer (SSA's map)           seg_ssa.yaml
  ssa_long      seg_ssa for 1,500 iterations (the main job's compute)             seg_ssa_long.yaml
  tags_drop10   seg with 10 % of the novel tags dropped (INPUT.WEAKSHOT.TAG_NOISE) seg_tags_drop10.yaml
  tags_drop30   seg with 30 % of the novel tags dropped                          seg_tags_drop30.yaml
  tags_add10    seg with a spurious novel tag on 10 % of the images              seg_tags_add10.yaml
  seg_retrain   seg -> pseudo-labels -> retraining from scratch (the paper)       retraining.yaml
  crosim_retrain  crosim -> pseudo-labels -> retraining from scratch              retraining.yaml
  seg_warm      seg -> pseudo-labels -> retraining started from stage 1's weights
  crosim_warm   crosim -> pseudo-labels -> retraining started from stage 1's weights
  ssa_warm      ssa -> pseudo-labels -> retraining started from stage 1's weights (the main job)
  ssa_warm_tta  as ssa_warm with flip + 3-scale test-time augmented pseudo-labels

`--jobs` runs go side by side, each with cores / jobs threads (OMP_NUM_THREADS; OMP_WAIT_POLICY=PASSIVE).
Every run folder records its inputs (``stage.json``, as the pipeline does): re-running the command skips
finished runs, resumes interrupted ones and re-runs those whose config changed, so an interrupted table is
completed by running the command again. After every finished run it rewrites

  <output-dir>/ablation.md, ablation.png         table (mean ± std, per-seed values) and bar plot
  benchmarks/results/weakshot_ablation.json     {"rows": [{"name", "config", "stage", "in_main_job",
                                                  "seeds", "base", "novel", "hiou", ...}]} (one value per seed)
                                                (weakshot_ablation_shared.json for --dataset synthetic_shared_ws)

The record is merged, not replaced: a (row, seed) measured now replaces its old values, the others stay, so
a run of a few rows or seeds (or on a fresh checkout without the old run folders) completes the table.
"""
import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import simformer  # noqa: E402,F401
from simformer.tools.pipeline import pseudo_label_tta_opts  # noqa: E402
from simformer.engine.pipeline import _run, distributed_flags, follow_stage_dir, mark_stage_done, prepare_stage_dir, run_pipeline, stage_identity  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "synthetic", "simformer")
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
# --dataset -> (training split, test split, committed record). The rows' configs train on synthetic_ws; the
# other datasets are selected by DATASETS overrides appended to every run's options.
DATASETS = {
    "synthetic_ws": ("synthetic_ws_train", "synthetic_ws_val", os.path.join(RESULTS_DIR, "weakshot_ablation.json")),
    "synthetic_shared_ws": ("synthetic_shared_ws_train", "synthetic_shared_ws_val", os.path.join(RESULTS_DIR, "weakshot_ablation_shared.json")),
}
# The README's main job (tools/run_main.sh): stage-1 config and retraining start.
MAIN_JOB = {"stage1": "seg_ssa.yaml", "retrain_init": "stage1", "pseudo_label_tta": True}

# name -> (label, config, stage, task, row kind); a pipeline task gives a stage-1 and a stage-2 row.
ROWS = {
    "oracle": ("oracle: novel classes with pixel labels", "oracle.yaml", "oracle"),
    "oracle_long": ("oracle, 1,500 iterations (the compute of stage 1 + warm retraining)", "oracle_long.yaml", "oracle"),
    "oracle_ssa": ("oracle with the main job's model (SSA pixel layer and map)", "oracle_ssa.yaml", "oracle"),
    "base_only": ("base-only: novel classes unseen", "base_only.yaml", 1),
    "no_comp": ("proposal-pixel transfer", "seg_no_comp.yaml", 1),
    "seg": ("+ complementary loss (seg)", "seg.yaml", 1),
    "crosim": ("+ pixel-pixel transfer (seg_crosim)", "seg_crosim.yaml", 1),
    "ssa": ("seg + SSA pixel layer (seg_ssa)", "seg_ssa.yaml", 1),
    "ssa_long": ("seg_ssa, 1,500 iterations (the compute of the main job)", "seg_ssa_long.yaml", 1),
    "tags_drop10": ("seg, 10 % of the novel tags dropped", "seg_tags_drop10.yaml", 1),
    "tags_drop30": ("seg, 30 % of the novel tags dropped", "seg_tags_drop30.yaml", 1),
    "tags_add10": ("seg, a spurious novel tag on 10 % of the images", "seg_tags_add10.yaml", 1),
    "seg_retrain": ("seg -> pseudo-labels -> retraining (scratch)", "retraining.yaml", 2),
    "crosim_retrain": ("seg_crosim -> pseudo-labels -> retraining (scratch)", "retraining.yaml", 2),
    "ssa_retrain": ("seg_ssa -> pseudo-labels -> retraining (scratch)", "retraining_ssa.yaml", 2),
    "seg_warm": ("seg -> pseudo-labels -> retraining (warm start, half schedule)", "retraining_warm.yaml", 2),
    "crosim_warm": ("seg_crosim -> pseudo-labels -> retraining (warm start, half schedule)", "retraining_warm.yaml", 2),
    "ssa_warm": ("seg_ssa -> pseudo-labels -> retraining (warm start, half schedule)", "retraining_ssa_warm.yaml", 2),
    "ssa_warm_tta": ("seg_ssa -> TTA pseudo-labels (flip, 3 scales) -> retraining (warm start, half schedule)", "retraining_ssa_warm.yaml", 2),
    "ssa_warm_tta_keep": ("the same, lost tags kept as image-level targets (KEEP_LOST_TAGS)", "retraining_ssa_warm_keep_tags.yaml", 2),
}
# stage-2 row -> (stage-1 row, retraining start)
PIPELINES = {
    "seg_retrain": ("seg", "scratch"), "crosim_retrain": ("crosim", "scratch"), "ssa_retrain": ("ssa", "scratch"),
    "seg_warm": ("seg", "stage1"), "crosim_warm": ("crosim", "stage1"), "ssa_warm": ("ssa", "stage1"), "ssa_warm_tta": ("ssa", "stage1"), "ssa_warm_tta_keep": ("ssa", "stage1"),
}  # fmt: skip
# stage-2 row -> overrides of its pseudo-label stage only (stage 1 is shared with the other pipelines):
# flip + short sides 96 / 128 / 160 averaged (benchmarks/tta_eval.py measured +2.5 / +2.3 pseudo-label novel IoU)
PSEUDO_LABEL_OPTS = {"ssa_warm_tta": pseudo_label_tta_opts([96, 128, 160]), "ssa_warm_tta_keep": pseudo_label_tta_opts([96, 128, 160])}  # what tools/run_main.sh uses
# stage-2 rows that share stage 1, retraining start and pseudo-label options with another row get their own folder
PIPELINE_SUFFIX = {"ssa_warm_tta_keep": "_tta_keep"}
STAGE1_ROWS = {s for s, _ in PIPELINES.values()}  # trained once in pipeline_<row>/, shared by the pipelines
# row -> the row it adds one thing to (paired per-seed differences: same seed = same data order)
PREVIOUS = {"seg": "no_comp", "crosim": "seg", "ssa": "seg", "seg_retrain": "seg", "seg_warm": "seg", "crosim_retrain": "crosim",
            "crosim_warm": "crosim", "ssa_retrain": "ssa", "ssa_warm": "ssa", "ssa_warm_tta": "ssa_warm", "ssa_warm_tta_keep": "ssa_warm_tta", "oracle": "seg", "no_comp": "base_only", "oracle_long": "oracle", "oracle_ssa": "oracle", "ssa_long": "ssa",
            "tags_drop10": "seg", "tags_drop30": "seg", "tags_add10": "seg"}  # fmt: skip
DEFAULT_ROWS = "oracle,seg,crosim,ssa,no_comp,seg_warm,ssa_warm,crosim_warm,seg_retrain,base_only"


def _full_metrics(run_dir, test_set):
    path = os.path.join(run_dir, "inference", test_set, "sem_seg_evaluation.pth")
    return {k: float(v) for k, v in torch.load(path, weights_only=False).items()} if os.path.isfile(path) else None


# processes of every run: {"num_gpus", "num_machines", "machine_rank", "dist_url"} (detectron2's flags)
LAUNCH = {"num_gpus": 1, "num_machines": 1, "machine_rank": 0, "dist_url": None}


def _train(run_dir, config, seed, opts, log_file):
    """One training run with the pipeline's stage rule (skip if done with the same inputs)."""
    run_opts = list(opts) + ["SEED", str(seed), "TEST.NUM_VIS_OVERLAYS", "0"]
    identity = stage_identity(config, run_opts)
    leader = LAUNCH["machine_rank"] == 0  # other machines follow machine 0's stage decisions
    prepare = prepare_stage_dir if leader else follow_stage_dir
    if not prepare(run_dir, identity, lambda m: _log(m, log_file)):
        flags = ["--num-gpus", str(LAUNCH["num_gpus"])] + distributed_flags(LAUNCH["num_machines"], LAUNCH["machine_rank"], LAUNCH["dist_url"])
        cmd = [sys.executable, "-m", "simformer.tools.train", "--resume", *flags, "--config-file", config, *run_opts, "OUTPUT_DIR", run_dir]
        seconds = _run(cmd, lambda m: _log(m, log_file), log_file)
        if leader:
            mark_stage_done(run_dir, identity, seconds=seconds)


def _log(msg, log_file):
    with open(log_file, "a") as f:
        f.write(msg + "\n")


def _stage_seconds(run_dir):
    try:
        with open(os.path.join(run_dir, "stage.json")) as f:
            return json.load(f).get("seconds")
    except (OSError, ValueError):
        return None


class Ablation:
    def __init__(self, out, seeds, opts, results_file, dataset="synthetic_ws"):
        self.out, self.seeds, self.results_file, self.dataset = out, seeds, results_file, dataset
        train, self.test_set, _ = DATASETS[dataset]
        self.opts = list(opts) if dataset == "synthetic_ws" else list(opts) + ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{self.test_set}',)"]
        self.lock = threading.Lock()
        self._config_ids = {}

    def run_dir(self, row, seed):
        return os.path.join(self.out, row, f"seed{seed}")

    def pipeline_dir(self, row, seed):
        """The run folder of a stage-2 row's pipeline (its stage1/ links to the shared stage-1 run)."""
        s1, init = PIPELINES[row]
        suffix = PIPELINE_SUFFIX.get(row, "_tta" if row in PSEUDO_LABEL_OPTS else "")
        return os.path.join(self.out, f"pipeline_{s1}_{init}{suffix}", f"seed{seed}")

    def stage1_dir(self, row, seed):
        """A stage-1 row's run; the pipelines built on it link their ``stage1/`` here (trained once)."""
        return os.path.join(self.out, f"pipeline_{row}", f"seed{seed}", "stage1")

    def task(self, row, seed):
        log_file = os.path.join(self.out, "logs", f"{row}_seed{seed}.log")
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        start = time.perf_counter()
        config = os.path.join(CONFIGS, ROWS[row][1])
        opts = self.opts + ["SEED", str(seed)]
        if row in PIPELINES:
            s1, init = PIPELINES[row]
            s1_config = os.path.join(CONFIGS, ROWS[s1][1])
            # the stage-1 model is shared: the pipeline folder's stage1/ is a link to the stage-1 row's run
            pdir = self.pipeline_dir(row, seed)
            os.makedirs(pdir, exist_ok=True)
            link = os.path.join(pdir, "stage1")
            if not os.path.lexists(link):
                os.symlink(os.path.relpath(self.stage1_dir(s1, seed), pdir), link)
            run_pipeline(s1_config, config, pdir, opts=opts + ["TEST.NUM_VIS_OVERLAYS", "0"], log=lambda m: _log(m, log_file),
                         retrain_init=init, log_file=log_file, pseudo_label_opts=PSEUDO_LABEL_OPTS.get(row, []), **LAUNCH)  # fmt: skip
        elif row in STAGE1_ROWS:
            _train(self.stage1_dir(row, seed), config, seed, self.opts, log_file)
        else:
            _train(self.run_dir(row, seed), config, seed, self.opts, log_file)
        return row, seed, time.perf_counter() - start

    def row_dir(self, row, seed):
        if row in PIPELINES:
            return os.path.join(self.pipeline_dir(row, seed), "retrain")
        if row in STAGE1_ROWS:
            return self.stage1_dir(row, seed)
        return self.run_dir(row, seed)

    def config_id(self, row):
        """Identity of what a row's runs are made from (resolved configs and options; a pipeline: both
        stages and the retraining start), so that record values of another config are never merged in."""
        if row not in self._config_ids:
            ident = stage_identity(os.path.join(CONFIGS, ROWS[row][1]), self.opts)["id"]
            if row in PIPELINES:
                s1, init = PIPELINES[row]
                ident = f"{self.config_id(s1)}+{ident}+{init}"
                if row in PSEUDO_LABEL_OPTS:
                    ident += "+pl:" + " ".join(PSEUDO_LABEL_OPTS[row])
            self._config_ids[row] = ident
        return self._config_ids[row]

    def collect(self, rows):
        records = []
        for row in rows:
            label, config, stage = ROWS[row]
            rec = {"name": row, "label": label, "config": f"configs/synthetic/simformer/{config}", "stage": stage,
                   "in_main_job": _in_main_job(row), "seeds": [], "base": [], "novel": [], "hiou": [], "miou": [], "minutes": []}  # fmt: skip
            rec["config_id"] = self.config_id(row)
            if row in PIPELINES:
                rec["stage1"], rec["retrain_init"] = PIPELINES[row]
                rec["pseudo_label_novel_iou"], rec["pseudo_label_coverage"] = [], []
            for seed in self.seeds:
                m = _full_metrics(self.row_dir(row, seed), self.test_set)
                if m is None:
                    continue
                rec["seeds"].append(seed)
                rec["base"].append(round(m["mIoU_base"], 2))
                rec["novel"].append(round(m["mIoU_novel"], 2))
                rec["hiou"].append(round(m["hIoU"], 2))
                rec["miou"].append(round(m["mIoU"], 2))
                sec = _stage_seconds(self.row_dir(row, seed))
                rec["minutes"].append(round(sec / 60, 1) if sec else None)
                if ROWS[row][2] == "oracle":
                    rec.setdefault("per_class_iou", []).append({k[4:]: round(v, 1) for k, v in m.items() if k.startswith("IoU-")})
                if row in PIPELINES:
                    try:
                        with open(os.path.join(self.pipeline_dir(row, seed), "pseudo_labels", "pseudo_labels.json")) as f:
                            pl = json.load(f)
                        rec["pseudo_label_novel_iou"].append(round(pl.get("quality_mIoU_novel", float("nan")), 2))
                        rec["pseudo_label_coverage"].append(round(pl.get("labelled_fraction", float("nan")), 2))
                    except OSError:
                        pass
            records.append(rec)
        return records

    def write(self, rows, merge_from=()):
        """Merge the runs of ``rows`` found on disk (and the rows of the records ``merge_from``: other
        runs' JSON records, e.g. of another output folder or machine) into the record; rewrite the table
        and the plot."""
        with self.lock:
            records = merge_records(_read_records(self.results_file, self.test_set, self.opts), self.collect(rows))
            for path in merge_from:
                with open(path) as f:
                    other = json.load(f)
                if other.get("test_set") != self.test_set:
                    raise ValueError(f"--merge-from {path}: a record of test set {other.get('test_set')!r}, not {self.test_set!r}")
                records = merge_records(records, other["rows"])
            for r in records:  # derived from MAIN_JOB, not carried over from older records
                r["in_main_job"] = _in_main_job(r["name"]) if r["name"] in ROWS else False
            os.makedirs(os.path.dirname(self.results_file), exist_ok=True)
            payload = {"benchmark": f"{self.dataset}, benchmarks/weakshot_ablation.py", "test_set": self.test_set,
                       "opts": self.opts, "main_job": MAIN_JOB, "rows": records}  # fmt: skip
            tmp = self.results_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(payload, f, indent=1)
            os.replace(tmp, self.results_file)
            table = format_table(records) + "\n\nPaired per-seed differences (same seed = same data order):\n\n" + format_differences(records)
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "ablation.md"), "w") as f:
                f.write(table + "\n")
            try:
                plot(records, os.path.join(self.out, "ablation.png"))
            except Exception as e:  # noqa: BLE001  (the table matters more than the picture)
                print(f"plot not written: {e}")
            return table


def _read_records(path, test_set, opts):
    """The rows of an existing record of the same benchmark (same test set and options), else ``[]``."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return []
    same = payload.get("test_set") == test_set and list(payload.get("opts", [])) == list(opts)
    return payload.get("rows", []) if same else []


PER_SEED_KEYS = ("base", "novel", "hiou", "miou", "minutes", "per_class_iou", "pseudo_label_novel_iou", "pseudo_label_coverage")


def merge_records(previous, fresh):
    """Rows of ``previous`` (the committed record) updated by ``fresh`` (runs found on disk), per seed.

    A seed measured now replaces that seed's old values; seeds only in the record are kept (their run
    folders may be gone: a new checkout, another machine), so running a few rows or seeds never drops the
    rest of the table. Old seeds are dropped when the row's ``config_id`` changed (another config or
    option: never a stale value beside new ones); rows recorded before ``config_id`` existed are kept.
    A row with no seed measured now leaves the record's row as it is (with its own ``config_id``): a
    ``--collect-only`` from a newer commit, whose default keys changed a row's identity, must not empty
    rows it has no runs of. Rows keep the record's order; new rows are appended."""
    out = {r["name"]: dict(r) for r in previous}
    order = [r["name"] for r in previous]
    for new in fresh:
        old = out.get(new["name"])
        if old is not None and not new["seeds"]:
            continue  # nothing measured now: the record's values (and identity) stand
        if old is not None and old.get("config_id", new.get("config_id")) != new.get("config_id"):
            old = {"seeds": []}  # made from another config: its values are not this row's
        if old is None:
            out[new["name"]] = new
            order.append(new["name"])
            continue
        merged = {k: v for k, v in new.items() if k not in PER_SEED_KEYS and k != "seeds"}
        seeds = sorted(set(old.get("seeds", [])) | set(new["seeds"]))
        merged["seeds"] = seeds
        for key in PER_SEED_KEYS:
            if key not in old and key not in new:
                continue
            values = []
            for s in seeds:
                src = new if s in new["seeds"] else old
                vals = src.get(key, [])
                i = src["seeds"].index(s)
                values.append(vals[i] if i < len(vals) else None)
            merged[key] = values
        out[new["name"]] = merged
    return [out[n] for n in order]


def _in_main_job(row):
    stage1 = {"seg.yaml": "seg", "seg_crosim.yaml": "crosim", "seg_ssa.yaml": "ssa"}[MAIN_JOB["stage1"]]
    return row == stage1 or (PIPELINES.get(row) == (stage1, MAIN_JOB["retrain_init"]) and (row in PSEUDO_LABEL_OPTS) == MAIN_JOB["pseudo_label_tta"])


def _ms(values):
    if not values:
        return "-"
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"


def format_table(records):
    lines = ["| row | stage | seeds | base mIoU | novel mIoU | hIoU | hIoU per seed | main job |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if not r["seeds"]:
            continue
        per_seed = " / ".join(f"{v:.1f}" for v in r["hiou"])
        lines.append(f"| {r['label']} | {r['stage']} | {len(r['seeds'])} | {_ms(r['base'])} | {_ms(r['novel'])} | {_ms(r['hiou'])} | {per_seed} | {'yes' if r['in_main_job'] else ''} |")
    return "\n".join(lines)


def format_differences(records):
    """Per-seed paired differences of novel mIoU and hIoU between a row and the row it builds on."""
    by_name = {r["name"]: r for r in records}
    lines = ["| row | compared with | seeds | Δ novel mIoU (mean ± std) | Δ novel per seed | Δ hIoU (mean ± std) |", "|---|---|---|---|---|---|"]
    for r in records:
        prev = by_name.get(PREVIOUS.get(r["name"], ""))
        if prev is None:
            continue
        seeds = [s for s in r["seeds"] if s in prev["seeds"]]
        if not seeds:
            continue
        d_novel = [r["novel"][r["seeds"].index(s)] - prev["novel"][prev["seeds"].index(s)] for s in seeds]
        d_hiou = [r["hiou"][r["seeds"].index(s)] - prev["hiou"][prev["seeds"].index(s)] for s in seeds]
        per_seed = " / ".join(f"{v:+.1f}" for v in d_novel)
        lines.append(f"| {r['name']} | {prev['name']} | {len(seeds)} | {_ms(d_novel)} | {per_seed} | {_ms(d_hiou)} |")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if r["seeds"]]
    if not records:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(records)), 4))
    width = 0.27
    for k, (key, colour) in enumerate((("base", "tab:blue"), ("novel", "tab:orange"), ("hiou", "tab:green"))):
        xs = np.arange(len(records)) + (k - 1) * width
        means = [np.mean(r[key]) for r in records]
        stds = [np.std(r[key], ddof=1) if len(r[key]) > 1 else 0 for r in records]
        ax.bar(xs, means, width, yerr=stds, capsize=3, color=colour, label={"hiou": "hIoU"}.get(key, key + " mIoU"))
        for x, r in zip(xs, records):
            ax.scatter([x] * len(r[key]), r[key], s=8, color="black", zorder=3)
    ax.set_xticks(np.arange(len(records)))
    ax.set_xticklabels([r["name"] for r in records], rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title("synthetic weak-shot ablation: mean ± std over seeds (dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (each gets cores / jobs threads)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated rows, in the order to run them; any of {', '.join(ROWS)}")
    parser.add_argument("--dataset", default="synthetic_ws", choices=sorted(DATASETS), help="weak-shot split every row trains and is tested on")
    parser.add_argument("--results", default=None, help="the committed JSON record (default: the dataset's, in benchmarks/results/)")
    parser.add_argument("--collect-only", action="store_true", help="only rewrite the table, plot and record from the finished runs")
    parser.add_argument("--merge-from", nargs="+", default=[], metavar="JSON",
                        help="with --collect-only: also merge the rows of these records (runs of another output folder or machine, each row with its own config_id)")  # fmt: skip
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run and machine (detectron2's flag)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines per run; start the same command on each")
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default=None, help="tcp://<machine 0>:<port> for several machines")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; expected some of {list(ROWS)}")
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    LAUNCH.update(num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url)
    distributed_flags(args.num_machines, args.machine_rank, args.dist_url)  # validate now
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    threads = int(os.environ.setdefault("OMP_NUM_THREADS", str(threads)))  # an OMP_NUM_THREADS already set wins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = os.path.abspath(args.output_dir)
    ab = Ablation(out, args.seeds, args.opts, os.path.abspath(args.results or DATASETS[args.dataset][2]), args.dataset)
    if args.collect_only:
        print(ab.write(rows, merge_from=args.merge_from))
        return
    if args.merge_from:
        parser.error("--merge-from goes with --collect-only")
    # seed-major order within each row, so a row's seeds finish together; stage-1 rows before their pipelines
    order = []
    for row in rows:
        if row in PIPELINES and PIPELINES[row][0] not in rows:
            rows.append(PIPELINES[row][0])
    for row in rows:
        order += [(row, s) for s in args.seeds]
    done = {}
    events = {(r, s): threading.Event() for r, s in order}

    def run(row, seed):
        if row in PIPELINES:  # wait for the stage-1 run of the same seed
            events[(PIPELINES[row][0], seed)].wait()
        try:
            return ab.task(row, seed)
        finally:
            events[(row, seed)].set()

    # a pipeline waits for its stage-1 run of the same seed, which comes earlier in the order (FIFO pool)
    order.sort(key=lambda rs: max(rows.index(rs[0]), rows.index(PIPELINES[rs[0]][0]) + 1) if rs[0] in PIPELINES else rows.index(rs[0]))
    t0 = time.perf_counter()
    print(f"{len(order)} runs, {args.jobs} at a time, {threads} thread(s) each; logs in {out}/logs", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run, r, s): (r, s) for r, s in order}
        for fut in as_completed(futures):
            r, s = futures[fut]
            try:
                _, _, sec = fut.result()
                done[(r, s)] = sec
                print(f"[{(time.perf_counter() - t0) / 60:6.1f} min] {r} seed {s}: done in {sec / 60:.1f} min ({len(done)}/{len(order)})", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"[{(time.perf_counter() - t0) / 60:6.1f} min] {r} seed {s}: FAILED: {e}", flush=True)
            ab.write(rows)
    table = ab.write(rows)
    print("\n" + table)
    print(f"\nresults: {ab.results_file}; plot: {out}/ablation.png")


if __name__ == "__main__":
    main()
