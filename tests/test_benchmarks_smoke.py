"""The benchmarks' measuring code on tiny inputs: FLOP counts, peak memory, subprocess workers, growth.

Timings are not asserted (they belong to the benchmarks); what is asserted are values that must hold on
any machine: FLOPs grow with pixels, a known allocation shows in the peak, the gradient + AdamW state is
3 x the parameters, both MaskFormers have the same parameter count.
"""
import argparse
import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
M = importlib.import_module("_measure")
bench_flops = importlib.import_module("bench_flops")
bench_scaling = importlib.import_module("bench_scaling")
bench_vs_hf = importlib.import_module("bench_vs_hf_maskformer")
shared_confusion = importlib.import_module("shared_confusion")
bench_weakshot_step = importlib.import_module("bench_weakshot_step")

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak-RSS reset needs Linux /proc")


# ---------------------------------------------------------------- _measure
def test_block_label_map_has_exactly_the_requested_classes():
    g = torch.Generator().manual_seed(0)
    label = M.block_label_map(37, 171, 8, 4, g)
    assert label.shape == (37, 37) and label.dtype == torch.int64
    assert len(torch.unique(label)) == 8
    assert int(label.max()) < 171


def test_weakshot_pairs_mark_novel_targets_without_masks():
    novel = [1, 2, 3]
    batch = M.weakshot_pair_batch(2, 16, 12, novel, classes_per_image=6, grid=3)
    assert len(batch) == 2 and all("pair" in x for x in batch)
    for x in batch + [x["pair"] for x in batch]:
        inst = x["instances"]
        is_novel = torch.isin(inst.gt_classes, torch.tensor(novel))
        assert torch.equal(inst.gt_has_mask, ~is_novel)
        assert not inst.gt_masks[is_novel].any()
        assert not torch.isin(x["sem_seg"], torch.tensor(novel)).any()
        assert torch.equal(torch.unique(x["sem_seg_raw"]).sort().values, inst.gt_classes.sort().values)


PEAK_PROBE = """
import sys, torch
sys.path.insert(0, {bench!r})
import _measure as M
with M.PeakMemory(torch.device("cpu")) as mem:
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del x
assert "VmHWM" in mem.method, mem.method
assert mem.delta >= 60 * M.MIB, mem.delta
assert M.current_rss() < mem.peak
print("ok")
"""


@linux_only
def test_peak_memory_sees_a_transient_allocation():
    """In a fresh process: inside a long test session the allocator may reuse resident pages."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", PEAK_PROBE.format(bench=BENCHMARKS)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_interleaved_alternates_order_and_drops_warmup():
    calls = []
    times = M.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(v["wall"]) for v in times.values()] == [3, 3] and [len(v["cpu"]) for v in times.values()] == [3, 3]


def test_op_categories_put_convolutions_and_matmuls_in_their_rows():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x, w = torch.randn(2, 8, 32, 32), torch.randn(256, 256)

    def fn():
        conv(x).sum().backward()
        (w @ w).relu()

    cats = M.op_categories(fn)
    assert cats["convolution"] > 0 and cats["matmul (linear, attention, mask products)"] > 0
    parts = sum(v for k, v in cats.items() if k != "total")
    assert parts == pytest.approx(cats["total"], rel=1e-6)


def test_live_tensor_peak_counts_new_storages_until_freed():
    with M.LiveTensorPeak() as m:
        a = torch.ones(1000)  # 4,000 bytes
        b = a * 2  # + 4,000
        b.view(10, 100).t()  # views alias b: nothing new
        del a  # - 4,000
        c = torch.zeros(2000)  # + 8,000: peak 12,000
        del c
        d = torch.ones(500)  # + 2,000
    assert m.peak == 12000 and m.live == 6000 and m.peak_op[1] == (2000,)
    assert b.sum() == 2000 and d.numel() == 500


def test_weakshot_step_builds_and_trains_every_model_and_option():
    steps = bench_weakshot_step.build_steps(64, ["defaults", "points"], "cpu")
    assert sorted(steps) == sorted((m, o) for m in ("seg", "seg_crosim") for o in ("defaults", "points"))
    for step in steps.values():
        step()  # forward with losses + backward + optimizer step, must not raise


def test_growth_exponent():
    rows = bench_scaling.growth([1.0, 4.0, 16.0], [2.0, 8.0, 64.0])
    assert [r["y_ratio"] for r in rows] == [4.0, 8.0]
    assert rows[0]["exponent"] == pytest.approx(1.0) and rows[1]["exponent"] == pytest.approx(1.5)


# ---------------------------------------------------------------- bench_flops
@pytest.fixture(scope="module")
def r18_model():
    import simformer  # noqa: F401
    from detectron2.modeling import build_model

    cfg = M.build_cfg(M.R18_SYNTHETIC_CONFIG, [])
    torch.manual_seed(0)
    return build_model(cfg)


def test_flops_grow_with_pixels_and_leave_the_model_unchanged(r18_model):
    k = r18_model.sem_seg_head.num_classes
    before = {n: v.clone() for n, v in r18_model.state_dict().items()}
    small = bench_flops.training_forward_flops(r18_model, M.maskformer_batch(2, 64, k))
    large = bench_flops.training_forward_flops(r18_model, M.maskformer_batch(2, 128, k))
    # convolutions, cross-attention and mask products are linear in pixels; the queries' part is constant
    assert 3.3 < large / small <= 4.0
    infer_small = bench_flops.inference_flops(r18_model, M.inference_inputs(M.maskformer_batch(1, 64, k)))
    infer_large = bench_flops.inference_flops(r18_model, M.inference_inputs(M.maskformer_batch(1, 128, k)))
    assert 3.3 < infer_large / infer_small <= 4.0
    # batch 2 with deep supervision (every layer's masks) costs more than twice one eval forward
    assert small > 2 * infer_small
    after = r18_model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)  # BN statistics restored after tracing


def test_flops_case_and_fractions():
    rates = bench_flops.matmul_throughput(128, repeats=2)
    assert set(rates) == {"torch.mm", "1x1 conv", "3x3 conv"} and all(r["wall"] > 0 and r["cpu"] > 0 for r in rates.values())
    peak = bench_flops.peak_of(rates, {"other": {"wall": 1e18, "cpu": 1.0}})
    assert peak["wall"] == 1e18 and peak["cpu"] == max(r["cpu"] for r in rates.values())
    config_file, opts, size, batch = bench_flops.case_setup("r18-synthetic", quick=True, opts=[])
    r = bench_flops.measure_case(config_file, opts, 32, 2, steps=1, warmup=0)
    assert r["size"] == 32 and r["batch"] == 2 and r["train_s"] > 0 and r["infer_s"] > 0
    f = bench_flops.fractions(r, peak)
    assert f["train_rate"] == pytest.approx(r["train_flops"] / r["train_s"])
    assert f["train_fraction"] == pytest.approx(f["train_rate"] / peak["wall"])
    assert f["infer_cpu_fraction"] == pytest.approx(r["infer_flops"] / r["infer_cpu_s"] / peak["cpu"])
    with pytest.raises(ValueError, match="unknown case"):
        bench_flops.case_setup("r101", quick=True, opts=[])


def test_train_step_follows_solver_amp(r18_model):
    """--ours-opts SOLVER.AMP.ENABLED True must reach the measured step (the trainer is not used there)."""
    cfg = M.build_cfg(M.R18_SYNTHETIC_CONFIG, ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"])
    dtypes = []
    hook = r18_model.backbone.res2.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    optimizer = torch.optim.SGD(r18_model.parameters(), lr=0.0)
    try:
        M.train_step_fn(r18_model, optimizer, M.maskformer_batch(1, 64, 12), cfg)()
        M.train_step_fn(r18_model, optimizer, M.maskformer_batch(1, 64, 12))()
    finally:
        hook.remove()
    assert dtypes == [torch.bfloat16, torch.float32]


# ---------------------------------------------------------------- bench_scaling (subprocess workers)
def _scaling_args():
    return argparse.Namespace(steps=1, warmup=1, threads=1, opts=[])


@linux_only
def test_scaling_size_point_in_a_subprocess():
    r = bench_scaling.run_point({"kind": "size", "size": 64, "batch": 1}, _scaling_args())
    assert r["step_s"] > 0 and r["cpu_s"] > 0 and r["images"] == 1
    assert r["peak"] >= r["baseline"] > 0
    # gradients + AdamW's two moments (+ one step counter per tensor): 3 x fp32 parameters, all trainable
    assert 12 * r["params"] <= r["state"] <= 12 * r["params"] + 4096
    assert r["delta"] > r["state"]  # they were allocated during the measured steps


@linux_only
def test_scaling_pair_points_in_subprocesses():
    args = _scaling_args()
    crosim = bench_scaling.run_point({"kind": "pairs", "size": 64, "pairs": 1, "crosim": True}, args)
    plain = bench_scaling.run_point({"kind": "pairs", "size": 64, "pairs": 1, "crosim": False}, args)
    assert crosim["images"] == plain["images"] == 2
    assert crosim["step_s"] > 0 and plain["step_s"] > 0
    assert crosim["params"] > plain["params"]  # SimNet


def test_worker_failure_names_the_task():
    with pytest.raises(RuntimeError, match="'kind': 'nope'"):
        bench_scaling.run_point({"kind": "nope"}, _scaling_args())


# ---------------------------------------------------------------- bench_vs_hf_maskformer
def _vs_args(**kw):
    args = bench_vs_hf.parse_args(["--quick", "--threads", "1"])
    args.size = 64
    vars(args).update(kw)
    return args


def test_ours_side_is_configured_like_the_peer():
    args = _vs_args()
    cfg = bench_vs_hf.ours_cfg(args)
    mf = cfg.MODEL.MASK_FORMER
    assert (mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS, mf.HIDDEN_DIM, mf.DIM_FEEDFORWARD, mf.DEEP_SUPERVISION) == (100, 6, 256, 2048, True)
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NORM, cfg.MODEL.WEIGHTS) == (50, "BN", "")
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == args.num_classes
    step, infer, extra = bench_vs_hf.build_side("ours", args)
    step()
    out = infer()
    assert out[0]["sem_seg"].shape == (args.num_classes, 64, 64)
    assert extra["model"].training  # inference puts it back in training mode
    with pytest.raises(SystemExit):
        bench_vs_hf.parse_args(["--ours-opts", "MODEL.MASK_FORMER.DEC_LAYERS"])


@linux_only
def test_ours_memory_worker():
    r = bench_vs_hf.memory_of("ours", "train", _vs_args())
    assert r["peak"] >= r["baseline"] > 0 and r["delta"] > 0


def test_peer_has_the_same_architecture():
    pytest.importorskip("transformers", reason="the peer benchmark needs `pip install -e .[bench]`")
    args = _vs_args()
    cfg = bench_vs_hf.ours_cfg(args)
    ours, _ = bench_vs_hf.build_ours(cfg)
    peer_step, peer_infer, peer = bench_vs_hf.build_side("peer", args)
    for name, a, b in bench_vs_hf.parameter_rows(ours, peer["model"]):
        assert a == b, name
    peer_step()
    # final prediction + 6 deep-supervision slots (HF also supervises the decoder input) x 3 terms
    assert len(peer["steps"].loss_names) == 21
    assert peer_infer()[0].shape == (64, 64)


def test_weakshot_ablation_record_table_and_plot(tmp_path):
    """The committed record has one value per finished seed, rows keep their order, the table gives mean ±
    std (sample std) with the per-seed values, and a plot is drawn."""
    import json

    import torch

    ab = importlib.import_module("weakshot_ablation")

    runner = ab.Ablation(str(tmp_path / "out"), [1, 2, 3], [], str(tmp_path / "record.json"))
    metrics = {("oracle", 1): (80.0, 60.0), ("oracle", 2): (82.0, 64.0), ("seg_warm", 1): (78.0, 40.0)}
    for (row, seed), (base, novel) in metrics.items():
        d = os.path.join(runner.row_dir(row, seed), "inference", runner.test_set)
        os.makedirs(d)
        hiou = 2 * base * novel / (base + novel)
        torch.save({"mIoU": (base + novel) / 2, "mIoU_base": base, "mIoU_novel": novel, "hIoU": hiou, "IoU-a": 1.0}, os.path.join(d, "sem_seg_evaluation.pth"))
    table = runner.write(["oracle", "seg", "seg_warm"])
    record = json.load(open(tmp_path / "record.json"))
    rows = {r["name"]: r for r in record["rows"]}
    assert [r["name"] for r in record["rows"]] == ["oracle", "seg", "seg_warm"]
    assert rows["oracle"]["seeds"] == [1, 2] and rows["oracle"]["novel"] == [60.0, 64.0] and rows["oracle"]["stage"] == "oracle"
    assert rows["seg"]["seeds"] == [] and rows["seg_warm"]["stage"] == 2 and rows["seg_warm"]["stage1"] == "seg"
    assert rows["oracle"]["per_class_iou"] == [{"a": 1.0}, {"a": 1.0}]
    assert "| 62.0 ± 2.8 |" in table and "81.0 ± 1.4" in table  # sample std of (60, 64) and (80, 82)
    assert os.path.isfile(tmp_path / "out" / "ablation.png")

    # a later run of one row and seed on a fresh checkout (old run folders gone) merges into the record
    import shutil

    shutil.rmtree(tmp_path / "out")
    fresh = ab.Ablation(str(tmp_path / "out"), [3], [], str(tmp_path / "record.json"))
    d = os.path.join(fresh.row_dir("oracle", 3), "inference", fresh.test_set)
    os.makedirs(d)
    torch.save({"mIoU": 70.0, "mIoU_base": 84.0, "mIoU_novel": 56.0, "hIoU": 67.2, "IoU-a": 2.0}, os.path.join(d, "sem_seg_evaluation.pth"))
    fresh.write(["oracle"])
    rows = {r["name"]: r for r in json.load(open(tmp_path / "record.json"))["rows"]}
    assert list(rows) == ["oracle", "seg", "seg_warm"] and rows["seg_warm"]["novel"] == [40.0]
    assert rows["oracle"]["seeds"] == [1, 2, 3] and rows["oracle"]["novel"] == [60.0, 64.0, 56.0]
    assert rows["oracle"]["per_class_iou"][2] == {"a": 2.0}

    # values made from another config are never kept beside new ones
    changed = [dict(r, config_id="another-config") if r["name"] == "oracle" else r for r in json.load(open(tmp_path / "record.json"))["rows"]]
    merged = {r["name"]: r for r in ab.merge_records(changed, fresh.collect(["oracle"]))}
    assert merged["oracle"]["seeds"] == [3] and merged["oracle"]["novel"] == [56.0]
    # ... but a row with no run now keeps its record values and identity, whatever its config_id is now
    kept = {r["name"]: r for r in ab.merge_records(changed, [dict(fresh.collect(["oracle"])[0], seeds=[], novel=[], base=[], hiou=[], miou=[], minutes=[])])}
    assert kept["oracle"]["seeds"] == [1, 2, 3] and kept["oracle"]["novel"] == [60.0, 64.0, 56.0] and kept["oracle"]["config_id"] == "another-config"

    # rows of another run's record (another output folder / machine) merge in with their own config_id
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"test_set": fresh.test_set, "rows": [dict(rows["seg_warm"], seeds=[2], novel=[44.0], base=[77.0], hiou=[56.0], miou=[60.0], minutes=[1.0], config_id="lane-b")]}))
    fresh.write([], merge_from=[str(other)])
    rows = {r["name"]: r for r in json.load(open(tmp_path / "record.json"))["rows"]}
    assert rows["seg_warm"]["seeds"] == [2] and rows["seg_warm"]["novel"] == [44.0] and rows["seg_warm"]["config_id"] == "lane-b"
    assert rows["oracle"]["novel"] == [60.0, 64.0, 56.0]  # untouched


def test_weakshot_ablation_other_dataset_adds_its_splits(tmp_path):
    ab = importlib.import_module("weakshot_ablation")
    runner = ab.Ablation(str(tmp_path), [1], ["SOLVER.MAX_ITER", "5"], str(tmp_path / "r.json"), "synthetic_shared_ws")
    assert runner.test_set == "synthetic_shared_ws_val"
    assert runner.opts == ["SOLVER.MAX_ITER", "5", "DATASETS.TRAIN", "('synthetic_shared_ws_train',)", "DATASETS.TEST", "('synthetic_shared_ws_val',)"]


def test_auc_matches_the_pairwise_definition():
    diag = importlib.import_module("weakshot_diagnostics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # ties on purpose
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert abs(diag.auc(scores, labels) - expected) < 1e-12
    assert np.isnan(diag.auc([0.1, 0.2], [True, True]))


def test_gpu_check_dry_run_writes_its_tables(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py --dry-run (CPU, tiny sizes) runs the device script's code paths: a
    throughput row, the CPU-vs-device loss comparison (equal on one device) and the Predictor timing."""
    import json

    gc = importlib.import_module("gpu_check")
    monkeypatch.setattr(gc, "DRY_RUN_CASES", [("seg_crosim", "fp32", "defaults")])
    assert gc.main(["--dry-run", "--sections", "throughput,consistency", "--out", str(tmp_path)]) == 0
    result = json.load(open(tmp_path / "gpu_check.json"))
    (row,) = result["sections"]["throughput"]
    assert row["model"] == "seg_crosim" and row["images_per_s"] > 0 and row["images"] == 2
    cons = result["sections"]["consistency"]
    assert cons["within_tolerance"] and all(r["rel_diff"] == 0 for r in cons["losses"]) and cons["predict_images_per_s"] > 0
    assert (tmp_path / "2_throughput.md").read_text().count("| seg_crosim | fp32 | defaults |") == 1
    assert ("peer" not in result["sections"]) and (tmp_path / "4_consistency.md").is_file()
    # the full matrix puts the defaults of every model and precision first (the time budget cuts the tail)
    assert gc.throughput_cases()[:9] == [(m, p, "defaults") for p in ("fp32", "bf16", "fp16") for m in ("maskformer", "seg", "seg_crosim")]


# ---------------------------------------------------------------- shared_confusion
def test_object_pixel_groups_split_errors_by_shape_and_texture():
    # classes 3.. are shape-major: 3 = striped ellipse, 4 = dotted ellipse, 6 = striped diamond, 10 = dotted trapezoid
    conf = np.zeros((12, 12), np.int64)
    conf[3, 3] = 50  # right
    conf[3, 4] = 10  # same shape (ellipse), wrong texture
    conf[3, 6] = 20  # same texture (striped), wrong shape
    conf[3, 10] = 15  # neither
    conf[3, 0] = 5  # stuff
    conf[0, 3] = 99  # a stuff pixel predicted as an object: not an object pixel, not counted
    groups = shared_confusion.object_pixel_groups(conf)
    assert groups == {"correct": 50.0, "same_shape_wrong_texture": 10.0, "same_texture_wrong_shape": 20.0, "other_object": 15.0, "stuff": 5.0}


def test_query_specialisation_counts_by_hand(tmp_path):
    qs = importlib.import_module("query_specialisation")
    # 2 images, 3 queries, K = 2 real classes + no-object
    final = np.array([
        [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]],  # q0 -> 0, q1 -> 1, q2 not confident
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],  # q0 -> 0, q1 -> 0, q2 not confident
    ])
    initial = np.array([[0.5, 0.2, 0.3], [0.1, 0.4, 0.5], [0.2, 0.1, 0.7]])  # P_0 real-class argmax: 0, 1, 0
    out = qs.specialisation(final, initial)
    assert out["confident"] == 4
    assert out["identity_agreement"] == 75.0  # q0 twice and q1 once agree with P_0; q1 on image 2 does not
    assert out["purity"] == 75.0  # q0: 2 of 2 on class 0; q1: 1 of 2 on its most frequent class
    assert qs.specialisation(final * 0 + 1 / 3, initial)["confident"] == 0

    metrics = tmp_path / "metrics.json"
    metrics.write_text("\n".join(json.dumps(r) for r in [
        {"iteration": 9, "loss_ce": 2.0, "loss_ce_0": 2.5}, {"iteration": 150, "loss_ce": 1.0, "loss_ce_0": 1.5},
        {"iteration": 199, "loss_ce": 0.5, "loss_ce_0": 0.7}, {"iteration": 199, "mIoU": 3.0}]))  # fmt: skip
    assert qs.class_losses(str(metrics)) == {"iterations": [150, 199], "loss_ce_initial": 1.1, "loss_ce_final": 0.75}


def test_lost_tags_counts_by_hand():
    lt = importlib.import_module("lost_tags")
    truth = np.array([[5, 5, 8], [9, 9, 0], [0, 1, 8]])
    pseudo = np.array([[255, 255, 8], [8, 9, 0], [0, 1, 255]])  # class 5 lost: its 2 pixels are ignore; 9 kept
    c = lt.lost_tag_counts(pseudo, truth, [5, 8, 9], [5, 8, 9])
    assert (c["tagged"], c["lost"], c["lost_sizes"], c["ignore"], c["other_novel"], c["base"]) == (3, 1, [2], 2, 0, 0)
    c2 = lt.lost_tag_counts(np.array([[8, 0]]), np.array([[9, 9]]), [9], [5, 8, 9])  # 9 lost: 1 px -> novel 8, 1 px -> base 0
    assert (c2["lost"], c2["other_novel"], c2["base"]) == (1, 1, 1)
    s = lt.summarise([c, c2])
    assert s["tagged"] == 4 and s["lost"] == 2 and s["lost_percent"] == 50.0 and s["median_gt_pixels_of_lost"] == 2.0
    assert s["lost_pixels_percent"] == {"ignore": 50.0, "other_novel": 25.0, "base": 25.0}


def test_weakshot_ablation_rows_have_their_own_run_folders(tmp_path):
    ab = importlib.import_module("weakshot_ablation")
    runner = ab.Ablation(str(tmp_path), [1], [], str(tmp_path / "r.json"))
    dirs = [runner.row_dir(row, 1) for row in ab.ROWS]
    assert len(set(dirs)) == len(dirs)  # no two rows write (or read) the same run
