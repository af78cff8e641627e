#!/usr/bin/env python
"""Our MaskFormer-R50 against Hugging Face ``transformers``' MaskFormer, configured alike, in one run.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_vs_hf_maskformer.py   # 512x512, batch 2, CPU
    python benchmarks/bench_vs_hf_maskformer.py --size 512 --batch 2 --steps 5 --warmup 2 --threads 8
    python benchmarks/bench_vs_hf_maskformer.py --ours-opts MODEL.MASK_FORMER.TRAIN_NUM_POINTS 12544
    python benchmarks/bench_vs_hf_maskformer.py --ours-opts MODEL.MASK_FORMER.CHANNELS_LAST True [--peer-channels-last]
    python benchmarks/bench_vs_hf_maskformer.py --ours-opts SOLVER.AMP.ENABLED True   # autocast bf16, both sides
    python benchmarks/bench_vs_hf_maskformer.py --device cuda
    python benchmarks/bench_vs_hf_maskformer.py --quick                              # smoke run, tiny size

Needs the peer: ``pip install -e .[bench]`` (transformers and its small dependencies).

Both models: ResNet-50 (bottleneck, stride in the 3x3 conv, trainable BatchNorm) from random init, FPN
pixel decoder with GroupNorm (256 channels, 256-d mask features), 6-layer post-norm DETR decoder (256-d,
8 heads, FFN 2048, dropout 0.1 on the residual branches, the attention weights and the FFN activation,
as in MaskFormer / DETR), 100 queries, the same number of classes, loss weights CE 1 / focal 20 /
dice 1, no-object weight 0.1, deep supervision, the same random images and targets (block label maps
with ``--classes-per-image`` classes each). Ours is built through detectron2's config
(configs/maskformer/maskformer_R50.yaml with MODEL.RESNETS.NORM BN, MODEL.WEIGHTS ""), the peer through
``MaskFormerConfig(backbone_config=ResNetConfig(...), decoder_config=DetrConfig(...))``; the parameter
counts of backbone, pixel decoder and query decoder are printed side by side as the check.

Measured: training step (forward with losses + backward + optimizer step; ours: the project's optimizer,
fused AdamW with full-model gradient clipping; peer: fused ``torch.optim.AdamW``, the default of HF's
Trainer) and inference (batch 1, network + semantic post-processing to the input size, each side's own),
the two models interleaved in one process (order alternated each round; medians), and peak memory, each
model in its own fresh subprocess (see benchmarks/_measure.py). Prints ratios ours / peer against the
targets (step time <= 0.8x, training peak memory <= 0.7x).

On a shared machine keep OMP_WAIT_POLICY=PASSIVE: with more busy processes than cores, OpenMP's default
spinning wait made 2-thread steps up to 50x slower here (see ``_measure.machine_note``).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _measure as M  # noqa: E402

PEER_INSTALL = "pip install -e '.[bench]'  (or: pip install transformers huggingface-hub safetensors regex tokenizers)"
TARGET_TIME, TARGET_MEMORY = 0.8, 0.7


def require_transformers():
    try:
        import transformers  # noqa: F401
        from transformers import MaskFormerForInstanceSegmentation  # noqa: F401
    except ImportError as e:
        sys.exit(f"bench_vs_hf_maskformer: the peer needs Hugging Face transformers, which is not importable ({e}).\nInstall it with: {PEER_INSTALL}")
    return transformers.__version__


# ---------------------------------------------------------------- the two models
def ours_cfg(args):
    """Our MaskFormer-R50 config: every architecture key the peer is matched to is set explicitly."""
    import simformer  # noqa: F401  (first: applies the detectron2 compatibility patches)

    opts = M.r50_opts(args.num_classes, args.device) + [
        "MODEL.META_ARCHITECTURE", "MaskFormer",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "100",
        "MODEL.MASK_FORMER.DEC_LAYERS", "6",
        "MODEL.MASK_FORMER.HIDDEN_DIM", "256",
        "MODEL.MASK_FORMER.NHEADS", "8",
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "2048",
        "MODEL.MASK_FORMER.DROPOUT", "0.1",
        "MODEL.MASK_FORMER.PRE_NORM", "False",
        "MODEL.MASK_FORMER.DEEP_SUPERVISION", str(not args.no_deep_supervision),
        "MODEL.SEM_SEG_HEAD.MASK_DIM", "256",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "256",
        "MODEL.SEM_SEG_HEAD.NORM", "GN",
    ] + list(args.ours_opts)  # fmt: skip
    return M.build_cfg(M.R50_CONFIG, opts)


def build_ours(cfg):
    """Our model in train mode and the project's optimizer."""
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model, build_optimizer(cfg, model)


def build_peer(args, cfg):
    """HF MaskFormer with the same architecture as ``cfg`` (our config), random init, and fused AdamW."""
    from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    mf = cfg.MODEL.MASK_FORMER
    backbone = ResNetConfig(
        num_channels=3, embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
        layer_type="bottleneck", hidden_act="relu", downsample_in_bottleneck=False,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    decoder = DetrConfig(
        decoder_layers=mf.DEC_LAYERS, d_model=mf.HIDDEN_DIM, num_queries=mf.NUM_OBJECT_QUERIES,
        decoder_ffn_dim=mf.DIM_FEEDFORWARD, decoder_attention_heads=mf.NHEADS, dropout=mf.DROPOUT,
        attention_dropout=mf.DROPOUT, activation_dropout=mf.DROPOUT, activation_function="relu",
        use_pretrained_backbone=False, use_timm_backbone=False,
    )  # fmt: skip
    config = MaskFormerConfig(
        backbone_config=backbone, decoder_config=decoder, num_labels=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        fpn_feature_size=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, mask_feature_size=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        use_auxiliary_loss=mf.DEEP_SUPERVISION, no_object_weight=mf.NO_OBJECT_WEIGHT,
        cross_entropy_weight=mf.CLASS_WEIGHT, mask_weight=mf.MASK_WEIGHT, dice_weight=mf.DICE_WEIGHT,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(config).to(args.device)
    if args.peer_channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=True)
    return model, optimizer


def parameter_rows(ours, peer):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    pred = ours.sem_seg_head.predictor
    return [
        ("backbone (ResNet-50)", count(ours.backbone), count(peer.model.pixel_level_module.encoder)),
        ("pixel decoder (FPN)", count(ours.sem_seg_head.pixel_decoder), count(peer.model.pixel_level_module.decoder)),
        ("query decoder + heads", count(pred), count(peer.model.transformer_module) + count(peer.class_predictor) + count(peer.mask_embedder)),
        ("total", count(ours), count(peer)),
    ]


# ---------------------------------------------------------------- inputs and steps
def peer_inputs(cfg, data, device):
    """The same images (normalised as ours does) and targets in HF's format."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=device).view(-1, 1, 1)
    pixel_values = torch.stack([(x["image"].to(device).float() - mean) / std for x in data])
    mask_labels = [x["instances"].gt_masks.to(device=device, dtype=torch.float32) for x in data]
    class_labels = [x["instances"].gt_classes.to(device) for x in data]
    return pixel_values, mask_labels, class_labels


class PeerSteps:
    """Training step and inference of the HF model. HF's semantic inference is the image processor's
    ``post_process_semantic_segmentation`` (class-weighted mask sum at mask resolution, then bilinear
    resize of the K score maps); the per-pixel argmax it ends with is included."""

    def __init__(self, model, optimizer, pixel_values, mask_labels, class_labels, deep_supervision, autocast, needs_scaler=False):
        from transformers.models.maskformer.image_processing_maskformer import MaskFormerImageProcessor

        self.model, self.optimizer = model, optimizer
        self.pixel_values, self.mask_labels, self.class_labels = pixel_values, mask_labels, class_labels
        self.deep_supervision = deep_supervision
        self.autocast = autocast  # our SOLVER.AMP setting, applied to the peer's forward too (HF Trainer's bf16 / fp16)
        self.scaler = torch.amp.GradScaler(pixel_values.device.type) if needs_scaler else None
        self.processor = MaskFormerImageProcessor()
        self.loss_names = []
        model.criterion.register_forward_hook(self._record_loss_names)

    def _record_loss_names(self, module, inputs, losses):
        self.loss_names = sorted(losses)

    def train_step(self):
        self.model.config.use_auxiliary_loss = self.deep_supervision
        # output_hidden_states=True: transformers 5.x drops the decoder's per-layer states (and then fails
        # in get_logits) when use_auxiliary_loss is on and hidden states were not requested.
        with self.autocast():
            out = self.model(pixel_values=self.pixel_values, mask_labels=self.mask_labels, class_labels=self.class_labels, output_hidden_states=self.deep_supervision)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            out.loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def infer(self):
        self.model.config.use_auxiliary_loss = False  # inference predicts from the last layer only, like ours
        size = tuple(self.pixel_values.shape[-2:])
        out = self.model(pixel_values=self.pixel_values[:1])
        return self.processor.post_process_semantic_segmentation(out, target_sizes=[size])


def build_side(side, args):
    """(step, infer, extra) for ``side`` in {"ours", "peer"}, models in train mode."""
    cfg = ours_cfg(args)
    data = M.maskformer_batch(args.batch, args.size, args.num_classes, args.classes_per_image)
    if side == "ours":
        ours, ours_opt = build_ours(cfg)
        single = M.inference_inputs(data)

        def infer():
            ours.eval()
            with torch.no_grad():
                out = ours(single)
            ours.train()
            return out

        return M.train_step_fn(ours, ours_opt, data, cfg), infer, {"cfg": cfg, "model": ours, "optimizer": ours_opt, "data": data}
    peer, peer_opt = build_peer(args, cfg)
    autocast, needs_scaler = M.autocast_of(cfg, torch.device(args.device))
    pixel_values, mask_labels, class_labels = peer_inputs(cfg, data, torch.device(args.device))
    if args.peer_channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    steps = PeerSteps(peer, peer_opt, pixel_values, mask_labels, class_labels, deep_supervision=cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION, autocast=autocast, needs_scaler=needs_scaler)

    def infer():
        peer.eval()
        with torch.no_grad():
            out = steps.infer()
        peer.train()
        return out

    return steps.train_step, infer, {"model": peer, "steps": steps}


def worker(task):
    """Fresh process: build one side, then peak memory of ``warmup + steps`` training steps or inferences."""
    args = argparse.Namespace(**task["args"])
    M.set_threads(args.threads)
    step, infer, _ = build_side(task["side"], args)
    fn = step if task["mode"] == "train" else infer
    with M.PeakMemory(torch.device(args.device)) as mem:
        for _ in range(args.warmup + args.steps):
            fn()
    M.report({"baseline": mem.baseline, "peak": mem.peak, "delta": mem.delta, "method": mem.method})


# ---------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square input size")
    parser.add_argument("--batch", type=int, default=2, help="training images per step (inference: 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (each runs both models)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: OMP_NUM_THREADS / torch default)")
    parser.add_argument("--num-classes", type=int, default=171, help="K of both models (171: COCO-Stuff)")
    parser.add_argument("--classes-per-image", type=int, default=8, help="mask targets per image (COCO-Stuff: about 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-deep-supervision", action="store_true", help="losses of the last decoder layer only, both sides")
    parser.add_argument("--skip-memory", action="store_true", help="time only (no subprocesses)")
    parser.add_argument("--profile", action="store_true", help="also print our step's phase split, both steps' top-10 ops and their self CPU time by op category")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64x64, batch 1, 1 step, 1 warm-up")
    parser.add_argument("--ours-opts", nargs="*", default=[], metavar="KEY VALUE", help="extra config overrides of our model")
    parser.add_argument("--peer-channels-last", action="store_true", help="also give the peer NHWC weights and input (what MODEL.MASK_FORMER.CHANNELS_LAST does for ours)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup = min(args.size, 64), 1, 1, 1
    if len(args.ours_opts) % 2:
        parser.error(f"--ours-opts takes KEY VALUE pairs, got {len(args.ours_opts)} items")
    return args


def memory_of(side, mode, args):
    task = {"side": side, "mode": mode, "args": {k: v for k, v in vars(args).items() if k != "worker"}}
    return M.run_worker(os.path.abspath(__file__), task, args.threads or torch.get_num_threads())


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    hf_version = require_transformers()
    threads = M.set_threads(args.threads)
    device = torch.device(args.device)

    ours_step, ours_infer, ours_x = build_side("ours", args)
    peer_step, peer_infer, peer_x = build_side("peer", args)
    cfg, ours = ours_x["cfg"], ours_x["model"]
    with torch.no_grad():
        ours_loss_names = sorted(ours(ours_x["data"]))

    train = M.interleaved({"ours": ours_step, "peer": peer_step}, args.steps, args.warmup, device)
    infer = M.interleaved({"ours": ours_infer, "peer": peer_infer}, args.steps, args.warmup, device)
    t = {k: M.median(v["wall"]) for k, v in train.items()}
    i = {k: 1000 * M.median(v["wall"]) for k, v in infer.items()}
    tc = {k: M.median(v["cpu"]) for k, v in train.items()}
    ic = {k: 1000 * M.median(v["cpu"]) for k, v in infer.items()}

    mf = cfg.MODEL.MASK_FORMER
    where = f"CPU, {M.machine_note(threads)}" if device.type == "cpu" else f"{torch.cuda.get_device_name(device)}"
    print(f"MaskFormer-R50 vs Hugging Face transformers {hf_version} MaskFormer; {where}")
    print(f"input {args.batch} x {args.size}x{args.size} (training), 1 x {args.size}x{args.size} (inference); K = {args.num_classes}, "
          f"{args.classes_per_image} mask targets per image; {mf.NUM_OBJECT_QUERIES} queries, {mf.DEC_LAYERS} decoder layers, "
          f"{mf.HIDDEN_DIM}-d, FFN {mf.DIM_FEEDFORWARD}; median of {args.steps} interleaved rounds after {args.warmup} warm-up")
    if args.ours_opts:
        print(f"our extra options: {' '.join(args.ours_opts)}")
    if args.peer_channels_last:
        print("peer: channels-last (NHWC) weights and input")
    if cfg.SOLVER.AMP.ENABLED:
        print(f"mixed precision (SOLVER.AMP): both forwards under torch.autocast({cfg.SOLVER.AMP.DTYPE}); ours keeps its criterion "
              "in fp32, the peer's loss runs in whatever autocast gives it")
    print(f"\n{'parameters':28}{'ours':>14}{'peer':>14}")
    for name, a, b in parameter_rows(ours, peer_x["model"]):
        print(f"{name:28}{a:14,d}{b:14,d}")

    peer_names = peer_x["steps"].loss_names
    print("\nloss terms (matching: Hungarian, class + 20 focal + dice costs at mask-feature resolution, targets nearest-downsampled):")
    print(f"  ours: {len(ours_loss_names)} terms = {_loss_summary(ours_loss_names)}; mask losses on {_mask_loss_resolution(cfg)}")
    print(f"  peer: {len(peer_names)} terms = {_loss_summary(peer_names)}; mask losses (sigmoid focal, dice) at full input resolution "
          "(predicted masks upsampled bilinearly to the target size); with deep supervision HF also supervises the decoder input "
          "(7 predictions for 6 layers)")

    rows = [
        ("training step (s)", t["ours"], t["peer"], TARGET_TIME),
        ("inference (ms/image)", i["ours"], i["peer"], None),
    ]
    if device.type == "cpu":  # process CPU seconds: less disturbed by other load on a shared machine
        rows += [("training step, CPU time (s)", tc["ours"], tc["peer"], TARGET_TIME), ("inference, CPU time (ms/image)", ic["ours"], ic["peer"], None)]
    live = {}
    for mode, fns in (("train", {"ours": ours_step, "peer": peer_step}), ("infer", {"ours": ours_infer, "peer": peer_infer})):
        for side, fn in fns.items():
            with M.LiveTensorPeak() as m:
                fn()
            live[mode, side] = m
        label = "training" if mode == "train" else "inference"
        rows.append((f"{label} peak live tensors (MiB)", live[mode, "ours"].peak / M.MIB, live[mode, "peer"].peak / M.MIB, None))
    if not args.skip_memory:
        for mode in ("train", "infer"):
            mem = {side: memory_of(side, mode, args) for side in ("ours", "peer")}
            label = "training" if mode == "train" else "inference"
            what = "RSS" if device.type == "cpu" else "CUDA alloc"
            rows.append((f"{label} peak {what}, total (MiB)", mem["ours"]["peak"] / M.MIB, mem["peer"]["peak"] / M.MIB, None))
            rows.append((f"{label} peak {what}, delta (MiB)", mem["ours"]["delta"] / M.MIB, mem["peer"]["delta"] / M.MIB, TARGET_MEMORY if mode == "train" else None))
        method = mem["ours"]["method"]
    print(f"\n{'':34}{'ours':>12}{'peer':>12}{'ours/peer':>11}  target")
    verdicts = []
    for name, a, b, target in rows:
        ratio = a / b
        note = ""
        if target is not None:
            note = f"<= {target}: {'met' if ratio <= target else 'NOT met'}"
            verdicts.append(ratio <= target)
        print(f"{name:34}{a:12.3f}{b:12.3f}{ratio:11.3f}  {note}")
    if not args.skip_memory:
        print(f"memory: each side in a fresh subprocess; total = whole-process peak ({method}), delta = peak - RSS after "
              "imports, model build and input creation; training memory over warm-up + timed steps")
    print("peak live tensors: in this process, the high-water mark of the tensor storages one step / inference creates "
          "(benchmarks/_measure.LiveTensorPeak: deterministic, no allocator effects, op workspaces not counted); at the peak: "
          + "; ".join(f"{mode} {side} {live[mode, side].peak_op[0]} {live[mode, side].peak_op[1]}" for mode, side in live))
    print("training step: ours = forward with losses + backward + the project's optimizer (fused AdamW, full-model gradient "
          "clipping); peer = the same with fused torch AdamW (HF Trainer's default)")

    if args.profile:
        print_profile(ours_x, peer_x, peer_step, args)
    return 0 if all(verdicts) else 1


def _loss_summary(names):
    base = sorted({n.rsplit("_", 1)[0] if n.rsplit("_", 1)[-1].isdigit() else n for n in names})
    layers = len(names) // max(len(base), 1)
    return f"{{{', '.join(base)}}} x {layers} decoder predictions"


def _mask_loss_resolution(cfg):
    points = cfg.MODEL.MASK_FORMER.get("TRAIN_NUM_POINTS", 0)
    if points:
        return f"{points} sampled points per mask (MODEL.MASK_FORMER.TRAIN_NUM_POINTS)"
    return "the full input resolution (predicted masks upsampled bilinearly, simformer/modeling/criterion.py)"


def print_profile(ours_x, peer_x, peer_step, args):
    model, optimizer, data = ours_x["model"], ours_x["optimizer"], ours_x["data"]
    phases = M.phase_times(model, optimizer, data, max(args.steps, 1), ours_x["cfg"])
    total = sum(phases.values())
    print(f"\nour training step by phase (median of {max(args.steps, 1)}):")
    for name, value in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:34}{value:8.3f} s  {100 * value / total:5.1f} %")
    ours_step = M.train_step_fn(model, optimizer, data, ours_x["cfg"])
    print("\ntop-10 ops of our training step by self CPU time (torch.profiler):")
    print(M.profile_top_ops(ours_step, 10))
    print("\ntop-10 ops of the peer's training step by self CPU time (torch.profiler):")
    print(M.profile_top_ops(peer_step, 10))
    rounds = [(M.op_categories(ours_step), M.op_categories(peer_step)) for _ in range(max(args.steps, 1))]
    cats = {side: {k: M.median([r[i][k] for r in rounds]) for k in rounds[0][0]} for i, side in enumerate(("ours", "peer"))}
    print(f"\none training step by op category, self CPU seconds under the profiler (median of {len(rounds)} interleaved rounds):")
    print(f"  {'category':56}{'ours':>9}{'peer':>9}{'ours/peer':>11}{'share of peer step':>20}")
    for name in cats["ours"]:
        a, b = cats["ours"][name], cats["peer"][name]
        print(f"  {name:56}{a:9.3f}{b:9.3f}{(a / b if b else float('nan')):11.2f}{100 * b / cats['peer']['total']:19.1f}%")


if __name__ == "__main__":
    sys.exit(main())
