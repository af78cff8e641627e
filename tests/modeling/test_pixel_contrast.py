"""Cross-image pixel contrast (related_methods §C, §D.3): loss values, anchor sampling, memory, model wiring."""
import math
import os
import socket
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from torch.nn import functional as F

from simformer.data.dataset_mappers import build_mapper
from simformer.data.datasets.weakshot import register_simulated_weakshot
from simformer.engine import build_optimizer
from simformer.modeling.losses.pixel_contrast import group_ranks, pixel_contrast_loss, ring_buffer_slots, sample_anchors
from simformer.modeling.matcher import HungarianMatcher
from simformer.modeling.pixel_contrast_head import PixelContrast, PixelContrastMemory
from simformer.modeling.loss_terms import PixelContrastLoss
from tests.data.test_weakshot_training import CLASSES, NOVEL
from tests.modeling.test_simformer_model import _cfg, data  # noqa: F401  (fixtures)


# ------------------------------------------------------------------------------------------------ loss
def test_loss_hand_computed_in_batch():
    # tau = 0.5, scale = 1. Anchors (label): a=(1,0) (0), b=(0.6,0.8) (0), n=(0,1) (1), m=(-1,0) (2).
    # Similarities / tau: a.b = 1.2, a.n = 0, a.m = -2, b.n = 1.6, b.m = -1.2, n.m = 0.
    # a: positive b, negatives n, m:   -log(e^1.2 / (e^1.2 + e^0 + e^-2))
    # b: positive a, negatives n, m:   -log(e^1.2 / (e^1.2 + e^1.6 + e^-1.2))
    # n, m: no positive -> not in the mean.
    la = -math.log(math.exp(1.2) / (math.exp(1.2) + 1.0 + math.exp(-2.0)))
    lb = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6) + math.exp(-1.2)))
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    loss = pixel_contrast_loss(emb, labels, temperature=0.5, loss_scale=1.0)
    assert loss.item() == pytest.approx((la + lb) / 2, rel=1e-6)
    # loss_scale only multiplies (spec Q6)
    assert pixel_contrast_loss(emb, labels, temperature=0.5, loss_scale=2.5).item() == pytest.approx(2.5 * (la + lb) / 2, rel=1e-6)


def test_loss_hand_computed_against_memory():
    # anchor a=(1,0) of class 0 vs memory: p1=(1,0) (0), p2=(0,1) (0), q=(0,-1) (1), invalid slot r=(1,0) (1).
    # tau = 1. Positives p1 (s=1), p2 (s=0); negative q (s=0); r is not filled, so not a negative.
    # The anchor is not excluded from the memory (no self mask, Q3).
    l1 = -math.log(math.e / (math.e + 1.0))
    l2 = -math.log(1.0 / (1.0 + 1.0))
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    loss = pixel_contrast_loss(
        torch.tensor([[1.0, 0.0]]), torch.tensor([0]), memory, torch.tensor([0, 0, 1, 1]), torch.tensor([True, True, True, False]), temperature=1.0
    )
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_loss_without_positives_or_anchors_is_zero_and_attached():
    emb = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = pixel_contrast_loss(emb, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    empty = pixel_contrast_loss(emb[:0], torch.zeros(0, dtype=torch.int64))
    assert empty.item() == 0.0 and empty.requires_grad
    # one class only: no negatives -> every log-probability is 0
    assert pixel_contrast_loss(emb, torch.tensor([1, 1, 1])).item() == pytest.approx(0.0, abs=1e-6)


def test_loss_invariant_to_the_order_of_pixels():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(40, 8), dim=1)
    labels = torch.randint(0, 4, (40,))
    perm = torch.randperm(40)
    a = pixel_contrast_loss(emb, labels)
    assert pixel_contrast_loss(emb[perm], labels[perm]).item() == pytest.approx(a.item(), rel=1e-6)
    # module level: every pixel is an anchor (max_views >= pixels), so a spatial permutation of features and
    # labels (the 1x1 projection commutes with it) leaves the loss unchanged
    module = PixelContrast(8, 4, proj_dim=6, max_samples=10_000, max_views=1_000, min_pixels=0, hard_anchors=False).eval()
    feats = torch.randn(2, 8, 4, 5)
    lab = torch.randint(-1, 4, (2, 4, 5))
    pix = torch.randperm(20)
    shuffled_feats = feats.flatten(2)[:, :, pix].view(2, 8, 4, 5)
    shuffled_lab = lab.flatten(1)[:, pix].view(2, 4, 5)
    assert module(shuffled_feats, shuffled_lab).item() == pytest.approx(module(feats, lab).item(), rel=1e-5)


def test_gradient_steps_separate_two_classes():
    torch.manual_seed(0)
    emb = torch.randn(20, 3, requires_grad=True)
    labels = torch.arange(20) % 2
    opt = torch.optim.SGD([emb], lr=0.5)
    e = F.normalize(emb.detach(), dim=1)
    same = labels[:, None] == labels[None, :]
    before = (e @ e.t())[same].mean() - (e @ e.t())[~same].mean()
    first = None
    for _ in range(30):
        loss = pixel_contrast_loss(F.normalize(emb, dim=1), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    e = F.normalize(emb.detach(), dim=1)
    sim = e @ e.t()
    assert loss.item() < 0.5 * first
    # same-class pixels pulled together, other-class pixels pushed apart
    assert before.abs() < 0.2 and sim[same].mean() - sim[~same].mean() > 1.2


# ------------------------------------------------------------------------------------------------ sampling
def test_group_ranks():
    groups = torch.tensor([3, 1, 3, 3, 1, 0, 5])
    assert group_ranks(groups, shuffle=False).tolist() == [0, 0, 1, 2, 1, 0, 0]
    torch.manual_seed(0)
    for _ in range(5):
        ranks = group_ranks(groups)
        for g in groups.unique():
            assert sorted(ranks[groups == g].tolist()) == list(range(int((groups == g).sum())))


def test_anchor_sampling_hard_easy_split():
    # image 0: class 0 on 10 pixels (3 hard), class 1 on 6 (0 hard), 4 ignored; image 1: class 1 on 12 (2 hard), class 2 on 8 (0 hard)
    labels = torch.tensor([[0] * 10 + [1] * 6 + [-1] * 4, [1] * 12 + [2] * 8])
    hard = torch.zeros_like(labels, dtype=torch.bool)
    hard[0, :3] = True
    hard[1, :2] = True
    hard[0, 16:] = True  # ignored pixels are never anchors, hard or not
    for seed in range(5):
        torch.manual_seed(seed)
        # 4 groups with more than 5 pixels -> n_view = min(12 // 4, 8) = 3
        idx, y = sample_anchors(labels, hard, 3, max_samples=12, max_views=8, min_pixels=5)
        assert torch.equal(labels.flatten()[idx], y)
        image = idx // 20
        assert [int(((image == i) & (y == c)).sum()) for i, c in ((0, 0), (0, 1), (1, 1), (1, 2))] == [3, 3, 3, 3]
        is_hard = hard.flatten()[idx]
        # both halves have >= 1.5 pixels: 1 hard + 2 easy; class 1 of image 0 has no hard pixel: 3 easy
        assert int(is_hard[(image == 0) & (y == 0)].sum()) == 1 and int(is_hard[(image == 1) & (y == 1)].sum()) == 1
        assert int(is_hard[y == 2].sum()) == 0 and int(is_hard[(image == 0) & (y == 1)].sum()) == 0
    # only the hard half is large enough: all easy pixels, the rest hard (n_view = 6; 1 easy + 5 hard)
    labels = torch.zeros(1, 10, dtype=torch.int64)
    hard = torch.ones_like(labels, dtype=torch.bool)
    hard[0, 0] = False
    idx, _ = sample_anchors(labels, hard, 1, max_samples=6, max_views=6, min_pixels=5)
    assert len(idx) == 6 and 0 in idx.tolist()
    # a group with <= min_pixels pixels gives no anchors (spec Q11); labels < 0 never do
    idx, _ = sample_anchors(labels, hard, 1, max_samples=6, max_views=6, min_pixels=10)
    assert len(idx) == 0
    idx, _ = sample_anchors(torch.full((2, 7), -1), torch.zeros(2, 7, dtype=torch.bool), 3, 10, 10, 0)
    assert len(idx) == 0


# ------------------------------------------------------------------------------------------------ memory
def test_ring_buffer_wraps_and_drops_the_oldest():
    ptr = torch.tensor([2, 0])
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1, 1, 1])
    valid = torch.tensor([True] * 8 + [False] * 2)
    slot, keep, count = ring_buffer_slots(labels, valid, ptr, size=4)
    assert count.tolist() == [3, 5]
    # class 0: slots 2, 3, 0 (wraps); class 1: 5 rows into 4 slots -> the first is dropped, the rest 1, 2, 3, 0
    assert slot[labels == 0].tolist() == [2, 3, 0]
    assert keep.tolist() == [True, False, True, True, True, True, True, True, False, False]
    assert slot[keep & (labels == 1)].tolist() == [1, 2, 3, 0]
    assert ((ptr + count) % 4).tolist() == [1, 1]


def test_memory_push_enqueue_and_dequeue_order():
    mem = PixelContrastMemory(2, 2, pixel_size=3, region_size=0, fp16=False)
    rows = lambda *v: torch.tensor([[float(x), 0.0] for x in v])  # noqa: E731
    mem.push("pixel", rows(1, 2), torch.tensor([0, 0]), torch.tensor([True, True]))
    assert mem.pixel_queue[0, :, 0].tolist() == [1, 2, 0] and mem.pixel_ptr.tolist() == [2, 0] and mem.pixel_filled.tolist() == [2, 0]
    # 3 more rows of class 0 (one invalid row in between): 3 overwrites the oldest (1) after wrapping
    mem.push("pixel", rows(3, 9, 4, 5), torch.tensor([0, 1, 0, 1]), torch.tensor([True, False, True, True]))
    assert mem.pixel_queue[0, :, 0].tolist() == [4, 2, 3] and mem.pixel_queue[1, :, 0].tolist() == [5, 0, 0]
    assert mem.pixel_ptr.tolist() == [1, 1] and mem.pixel_filled.tolist() == [3, 1]
    # nothing valid: unchanged
    before = mem.pixel_queue.clone()
    mem.push("pixel", rows(7, 8), torch.tensor([0, 1]), torch.tensor([False, False]))
    assert torch.equal(mem.pixel_queue, before) and mem.pixel_ptr.tolist() == [1, 1]
    feats, labels, valid = mem.contrast_set()
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and valid.tolist() == [True, True, True, True, False, False]
    assert feats[valid][:, 0].tolist() == [4, 2, 3, 5]


def test_memory_enqueue_regions_and_pixels():
    torch.manual_seed(0)
    mem = PixelContrastMemory(3, 4, pixel_size=10, region_size=5, pixels_per_image=2, fp16=False)
    emb = F.normalize(torch.randn(2, 4, 6), dim=1)  # (B, D, P)
    labels = torch.tensor([[0, 0, 0, 2, -1, -1], [2, 2, -1, -1, -1, -1]])
    mem.enqueue(emb, labels)
    # regions: one renormalised mean per (image, class), images in batch order
    assert mem.region_filled.tolist() == [1, 0, 2]
    expected = [F.normalize(emb[0, :, :3].mean(1), dim=0), F.normalize(emb[0, :, 3], dim=0), F.normalize(emb[1, :, :2].mean(1), dim=0)]
    assert torch.allclose(mem.region_queue[0, 0], expected[0], atol=1e-6)
    assert torch.allclose(mem.region_queue[2, 0], expected[1], atol=1e-6) and torch.allclose(mem.region_queue[2, 1], expected[2], atol=1e-6)
    # pixels: min(2, n) per (image, class): 2 of class 0, 1 + 2 of class 2; each an embedding of its class
    assert mem.pixel_filled.tolist() == [2, 0, 3] and mem.pixel_ptr.tolist() == [2, 0, 3]
    pix0 = {tuple(v.tolist()) for v in emb[0, :, :3].t()}
    assert {tuple(v.tolist()) for v in mem.pixel_queue[0, :2]} <= pix0
    assert len({tuple(v.tolist()) for v in mem.pixel_queue[0, :2]}) == 2


def test_memory_is_saved_and_restored():
    mem = PixelContrastMemory(2, 3, pixel_size=4, region_size=2)
    mem.enqueue(F.normalize(torch.randn(1, 3, 5), dim=1), torch.tensor([[0, 1, 1, 0, 1]]))
    state = mem.state_dict()
    assert {"pixel_queue", "pixel_ptr", "pixel_filled", "region_queue", "region_ptr", "region_filled"} <= set(state)
    assert state["pixel_queue"].dtype == torch.float16
    other = PixelContrastMemory(2, 3, pixel_size=4, region_size=2)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.buffers(), mem.buffers()))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank):
    # one pixel per (image, class), so pixel selection is deterministic; 2 images per process
    g = torch.Generator().manual_seed(rank)
    emb = F.normalize(torch.randn(2, 4, 3, generator=g), dim=1)
    labels = torch.tensor([[0, 1, -1], [1, 2, 0]]) if rank == 0 else torch.tensor([[2, -1, 1], [0, 1, -1]])
    return emb, labels


def _memory():
    return PixelContrastMemory(3, 4, pixel_size=3, region_size=2, pixels_per_image=1, fp16=False)


def _enqueue_worker(rank, world_size, port, result_file):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        mem = _memory()
        for _ in range(2):  # twice: every pixel queue (3 slots; 2 to 4 rows per step) wraps around
            mem.enqueue(*_batch(rank))
        torch.save(mem.state_dict(), result_file + f".{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip gloo's C++ teardown at exit (see tests/evaluation/test_sem_seg_evaluator.py)


def test_memory_identical_across_two_processes(tmp_path):
    result_file = str(tmp_path / "mem")
    mp.spawn(_enqueue_worker, args=(2, _free_port(), result_file), nprocs=2, join=True)
    states = [torch.load(result_file + f".{r}") for r in range(2)]
    # one process enqueueing the concatenated batch (rank order) gives the same memory
    single = _memory()
    emb, labels = zip(*(_batch(r) for r in range(2)))
    for _ in range(2):
        single.enqueue(torch.cat(emb), torch.cat(labels))
    for state in states:
        assert state.keys() == single.state_dict().keys()
        for k, v in single.state_dict().items():
            assert torch.equal(state[k], v), k
    # classes 0, 1, 2 are in 3, 4, 2 of the 4 images: 6, 8, 4 rows pushed into 3 slots (and 2 region slots)
    assert single.pixel_filled.tolist() == [3, 3, 3] and single.pixel_ptr.tolist() == [6 % 3, 8 % 3, 4 % 3]
    assert single.region_filled.tolist() == [2, 2, 2] and single.region_ptr.tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------------------ criterion / model
def test_contrast_labels_use_base_classes_with_masks_only():
    crit = PixelContrastLoss(PixelContrast(8, 5), 5, [2, 3], classes="base")
    raw = torch.tensor([[0, 1, 2, 3], [4, 255, 1, 0]])[:, None, :].expand(2, 2, 4)
    targets = [
        {"sem_seg_raw": raw[0], "labels": torch.tensor([0, 1, 2]), "has_mask": torch.tensor([True, True, False])},
        {"sem_seg_raw": raw[1], "labels": torch.tensor([4, 1]), "has_mask": torch.tensor([True, False])},
    ]
    # image 0: novel 2 and 3 never; image 1: class 1 and 0 have no mask target there
    assert crit.contrast_labels(targets)[:, 0].tolist() == [[0, 1, -1, -1], [4, -1, -1, -1]]
    crit.classes = "labelled"  # retraining: novel classes with (pseudo-label) masks are used
    targets[0]["has_mask"] = torch.tensor([True, True, True])
    assert crit.contrast_labels(targets)[:, 0].tolist() == [[0, 1, 2, -1], [4, -1, -1, -1]]


CONTRAST = [
    "MODEL.SIMFORMER.COMP_LOSS_WEIGHT", "0.2",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.WEIGHT", "0.1",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ_DIM", "16",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.MAX_VIEWS", "10",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.MIN_PIXELS_PER_CLASS", "10",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.WARMUP_ITERS", "1",
]  # fmt: skip
MEMORY = [
    "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.ENABLED", "True",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.PIXEL_SIZE", "20",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.REGION_SIZE", "3",
    "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.CANDIDATES", "40",
]  # fmt: skip


@pytest.mark.parametrize("variant", ["in_batch", "memory", "stride8_linear"])
def test_training_in_the_full_model(data, name, variant):  # noqa: F811
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    stride8_linear = ["MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ_STRIDE", "8", "MODEL.SIMFORMER.PIXEL_CONTRAST.PROJ", "linear"]
    opts = {"in_batch": [], "memory": MEMORY, "stride8_linear": stride8_linear}[variant]
    cfg = _cfg(name, "WeakShotDatasetMapper", *CONTRAST, *opts)
    torch.manual_seed(0)
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(name)
    batches = [[mapper(dicts[(3 * it + k) % len(dicts)]) for k in range(3)] for it in range(3)]
    model = build_model(cfg)
    model.train()
    pc = model.criterion.terms["pixel_contrast"].contrast
    assert model.weight_dict["loss_pixel_contrast"] == pytest.approx(0.1)
    optimizer = build_optimizer(cfg, model)
    head_before = [p.detach().clone() for p in pc.head.parameters()]
    values = []
    for batch in batches:
        losses = model(batch)
        assert {"loss_comp", "loss_pixel_contrast"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        values.append(losses["loss_pixel_contrast"].item())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert values[0] == 0.0  # warm-up: x0 for the first iteration
    assert values[2] > 0  # the base halves give anchors; in memory mode, the memory is filled by then
    assert any(not torch.equal(a, b) for a, b in zip(head_before, pc.head.parameters()))
    assert int(pc.num_steps) == len(batches) and "criterion.terms.pixel_contrast.contrast.num_steps" in model.state_dict()
    if variant == "memory":
        mem = pc.memory
        assert "criterion.terms.pixel_contrast.contrast.memory.pixel_queue" in model.state_dict()
        # only base classes ever enter the memory (left 0, right 1, car 4; novel 2, 3 never)
        assert mem.pixel_filled[[2, 3]].tolist() == [0, 0] and mem.pixel_filled[[0, 1]].min() > 0
        assert mem.region_filled.tolist()[:2] == [3, 3]
    # inference does not use the head
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in batches[0][0].items() if k == "image"}])
    assert out[0]["sem_seg"].shape[0] == 5


def test_contrast_gradient_reaches_the_pixel_decoder(data, name):  # noqa: F811
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    cfg = _cfg(name, "WeakShotDatasetMapper", *CONTRAST, "MODEL.SIMFORMER.PIXEL_CONTRAST.WARMUP_ITERS", "0")
    mapper = build_mapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(name)[:3]]
    model = build_model(cfg)
    model.train()
    model(batch)["loss_pixel_contrast"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sem_seg_head.pixel_decoder.parameters())


def test_config_errors(data, name):  # noqa: F811
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    bad = {
        "PROJ": ("mlp", "PROJ"),
        "CLASSES": ("novel", "CLASSES"),
        "PROJ_STRIDE": ("6", "PROJ_STRIDE"),
        "TEMPERATURE": ("0.0", "TEMPERATURE"),
    }
    for key, (value, match) in bad.items():
        with pytest.raises(ValueError, match=f"PIXEL_CONTRAST.{match}"):
            build_model(_cfg(name, "WeakShotDatasetMapper", *CONTRAST, f"MODEL.SIMFORMER.PIXEL_CONTRAST.{key}", value))
    with pytest.raises(ValueError, match="REGION_SIZE"):
        build_model(_cfg(name, "WeakShotDatasetMapper", *CONTRAST, *MEMORY, "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.PIXEL_SIZE", "0",
                         "MODEL.SIMFORMER.PIXEL_CONTRAST.MEMORY.REGION_SIZE", "0"))  # fmt: skip
    # off by default: no head, no loss term
    model = build_model(_cfg(name, "WeakShotDatasetMapper", "MODEL.SIMFORMER.COMP_LOSS_WEIGHT", "0.2"))
    assert "pixel_contrast" not in model.criterion.terms and "loss_pixel_contrast" not in model.weight_dict
