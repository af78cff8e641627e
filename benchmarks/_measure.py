"""Shared helpers of the benchmarks: timing, peak memory of a fresh subprocess, synthetic inputs, R50 config.

Not a benchmark itself (the leading underscore keeps it out of ``benchmarks/bench_*``). Every script that
uses it adds its own folder to ``sys.path`` when run as ``python benchmarks/<script>.py``.

Memory on CPU is the resident set size (RSS) of a *fresh* process that builds one model and runs it:
``baseline`` = RSS after imports and model build, ``peak`` = the process's high-water mark (VmHWM) while
the measured work runs, ``delta`` = peak - baseline. The high-water mark is reset after the build
(``/proc/self/clear_refs`` = 5, Linux >= 4.0), so the build itself does not count; where that is not
possible the lifetime maximum (``resource.getrusage().ru_maxrss``) is used and said so. On CUDA the
numbers are ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import weakref
from typing import Callable, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_CONFIG = os.path.join(REPO, "configs", "maskformer", "maskformer_R50.yaml")
R18_SYNTHETIC_CONFIG = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
CROSIM_CONFIG = os.path.join(REPO, "configs", "synthetic", "simformer", "seg_crosim.yaml")
RESULT_TAG = "@@BENCH_RESULT "
MIB = 2**20


# ---------------------------------------------------------------- timing
def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    """(wall-clock seconds, process CPU seconds) of ``fn()`` (CUDA work included in the wall time).

    CPU seconds add up all threads of this process; on a shared machine they are the steadier number,
    since time spent waiting for a core is not counted (spinning OpenMP threads still are)."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def interleaved(fns: Dict[str, Callable], rounds: int, warmup: int, device: torch.device) -> Dict[str, Dict[str, List[float]]]:
    """Time every function once per round, alternating the order each round (A B, B A, A B, ...) so slow
    drifts of a shared machine hit all of them alike. The first ``warmup`` rounds are not kept.
    Returns {name: {"wall": [s, ...], "cpu": [s, ...]}}."""
    names = list(fns)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = timed(fns[name], device)
            if r >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def median(values: List[float]) -> float:
    return statistics.median(values)


def set_threads(threads: int):
    """Torch intra-op threads (0 = leave torch's default); returns the number in use."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_note(threads: int) -> str:
    """One line on what disturbs CPU timings: threads, cores, load, OpenMP wait policy.

    With more busy processes than cores, OpenMP's default (spinning) wait policy can make a 2-thread step
    tens of times slower (a spinning thread waits for a descheduled partner at every barrier); on a
    shared machine run with OMP_WAIT_POLICY=PASSIVE."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    return (
        f"torch {torch.__version__}, {threads} CPU thread(s) of {os.cpu_count()} cores, OMP_WAIT_POLICY={policy}, "
        f"load average {load:.2f} at start (a shared machine inflates times; re-run on a quiet one)"
    )


# ---------------------------------------------------------------- memory
def _proc_status_kib(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is missing)."""
    kib = _proc_status_kib("VmRSS")
    return 1024 * kib if kib is not None else 0


def _lifetime_max_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def peak_rss() -> int:
    kib = _proc_status_kib("VmHWM")
    return 1024 * kib if kib is not None else _lifetime_max_rss()


class PeakMemory:
    """``with PeakMemory(device) as m: work()`` then ``m.baseline``, ``m.peak``, ``m.delta`` (bytes), ``m.method``.

    CPU: baseline = RSS on entry, peak = RSS high-water mark during the block (see the module docstring).
    CUDA: baseline = allocated tensors on entry, peak = ``max_memory_allocated`` during the block.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = self.peak = 0
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self.baseline = current_rss()
            self.method = "RSS high-water mark (VmHWM, reset after build)" if reset_peak_rss() else "ru_maxrss (lifetime, could not reset)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = peak_rss()
        return False

    @property
    def delta(self) -> int:
        return self.peak - self.baseline


class LiveTensorPeak(TorchDispatchMode):
    """``with LiveTensorPeak() as m: work()`` then ``m.peak`` (bytes) and ``m.peak_op`` (op name, shape).

    The high-water mark of the tensor storages created inside the block: every op output that does not
    alias one of the op's inputs counts its storage's bytes until that storage is freed. Deterministic, unlike
    RSS (no allocator caching, fragmentation or other threads), so two models compare to the byte; blind to
    op-internal workspaces (e.g. a convolution's scratch buffers) and to memory allocated outside PyTorch ops.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.peak_op = None
        self._sizes: Dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._sizes:
                continue
            self._sizes[key] = size
            self.live += size
            if self.live > self.peak:
                self.peak, self.peak_op = self.live, (str(func), tuple(t.shape))
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int):
        self.live -= self._sizes.pop(key, 0)


# ---------------------------------------------------------------- subprocess workers
def run_worker(script: str, task: Dict, threads: int, timeout: float = 1800) -> Dict:
    """Run ``python script --worker '<task json>'`` in a fresh process and return the dict it reported
    with :func:`report`. Raises with the worker's stderr tail when it fails."""
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, script, "--worker", json.dumps(task)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    results = [line[len(RESULT_TAG):] for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not results:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"benchmark worker {task} failed (exit status {proc.returncode}):\n{tail}")
    return json.loads(results[-1])


def report(result: Dict):
    """Called by a worker process: hand ``result`` (JSON-serialisable) back to :func:`run_worker`."""
    print(RESULT_TAG + json.dumps(result), flush=True)


# ---------------------------------------------------------------- synthetic inputs
def block_label_map(size: int, num_classes: int, classes_per_image: int, grid: int, generator: torch.Generator) -> torch.Tensor:
    """(size, size) int64 label map of grid x grid rectangular blocks drawn from ``classes_per_image``
    distinct random classes, every one of them present (so an image has exactly that many targets)."""
    k = min(classes_per_image, num_classes, grid * grid)
    classes = torch.randperm(num_classes, generator=generator)[:k]
    cells = torch.cat([torch.arange(k), torch.randint(0, k, (grid * grid - k,), generator=generator)])
    cells = classes[cells[torch.randperm(grid * grid, generator=generator)]].view(grid, grid)
    edges = torch.linspace(0, size, grid + 1).round().long()
    rows = torch.bucketize(torch.arange(size), edges[1:-1], right=True)
    return cells[rows][:, rows]


def _instances(size, classes, masks, has_mask=None):
    from detectron2.structures import Instances

    inst = Instances((size, size))
    inst.gt_classes, inst.gt_masks = classes, masks
    if has_mask is not None:
        inst.gt_has_mask = has_mask
    return inst


def maskformer_batch(batch: int, size: int, num_classes: int, classes_per_image: int = 8, grid: int = 4, seed: int = 0) -> List[Dict]:
    """Training inputs in the format of ``SemSegDatasetMapper``: random uint8 image, block label map,
    one mask target per class present (``label_map_to_targets``)."""
    from simformer.data.dataset_mappers import label_map_to_targets

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        label = block_label_map(size, num_classes, classes_per_image, grid, g)
        classes, masks = label_map_to_targets(label, 255)
        out.append({
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "sem_seg": label,
            "pad_mask": torch.zeros((size, size), dtype=torch.bool),
            "instances": _instances(size, classes, masks),
            "height": size,
            "width": size,
        })  # fmt: skip
    return out


def weakshot_pair_batch(pairs: int, size: int, num_classes: int, novel_class_ids, classes_per_image: int = 8, grid: int = 4, ignore_label: int = 255, seed: int = 0) -> List[Dict]:
    """``pairs`` training inputs in the format of ``PairDatasetMapper`` over ``WeakShotDatasetMapper``
    (simulated weak-shot data): each dict carries its partner under ``"pair"``; novel pixels are ignore in
    ``sem_seg`` and kept in ``sem_seg_raw``; base classes are mask targets, novel classes image-level
    targets (all-zero mask, ``gt_has_mask`` False)."""
    from simformer.data.dataset_mappers import label_map_to_targets

    g = torch.Generator().manual_seed(seed)
    is_novel = torch.zeros(num_classes + 1, dtype=torch.bool)
    is_novel[list(novel_class_ids)] = True

    def one():
        raw = block_label_map(size, num_classes, classes_per_image, grid, g)
        classes, masks = label_map_to_targets(raw, ignore_label)
        base = ~is_novel[classes]
        novel = classes[~base]
        return {
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "sem_seg": raw.masked_fill(is_novel[raw], ignore_label),
            "sem_seg_raw": raw,
            "pad_mask": torch.zeros((size, size), dtype=torch.bool),
            "instances": _instances(
                size,
                torch.cat([classes[base], novel]),
                torch.cat([masks[base], masks.new_zeros((len(novel), size, size))]),
                torch.arange(len(classes)) < int(base.sum()),
            ),
            "height": size,
            "width": size,
        }

    out = []
    for _ in range(pairs):
        first = one()
        first["pair"] = one()
        out.append(first)
    return out


def inference_inputs(batch_inputs: List[Dict]) -> List[Dict]:
    """The first image of a training batch as an inference input."""
    x = batch_inputs[0]
    return [{"image": x["image"], "height": x["height"], "width": x["width"]}]


# ---------------------------------------------------------------- our model
def build_cfg(config_file: str, opts: List[str]):
    """get_cfg + add_simformer_config + ``config_file`` + ``opts``, frozen (the predict tool's loader)."""
    from simformer.tools.predict import build_cfg as load

    return load(config_file, opts)


def r50_opts(num_classes: int, device: str = "cpu") -> List[str]:
    """MaskFormer-R50 (configs/maskformer/maskformer_R50.yaml) from random init with trainable BatchNorm
    (the shipped config's FrozenBN only makes sense with ImageNet weights)."""
    return [
        "MODEL.WEIGHTS", "",
        "MODEL.DEVICE", device,
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
    ]  # fmt: skip


def autocast_of(cfg, device: torch.device):
    """The training forward's context as the project's trainer sets it up: ``torch.autocast`` with
    ``SOLVER.AMP.DTYPE`` when ``SOLVER.AMP.ENABLED`` (simformer/engine/amp.py), else a no-op; and whether
    the backward pass needs a float16 gradient scaler."""
    import contextlib

    if cfg is None or not cfg.SOLVER.AMP.ENABLED:
        return contextlib.nullcontext, False
    from simformer.engine.amp import amp_dtype

    dtype = amp_dtype(cfg.SOLVER.AMP.DTYPE)
    return (lambda: torch.autocast(device_type=device.type, dtype=dtype)), dtype == torch.float16


def train_step_fn(model, optimizer, data, cfg=None):
    """One training step: forward (with losses) + backward + optimizer step; with ``cfg`` given, mixed
    precision as ``SOLVER.AMP.*`` asks (autocast forward; float16 adds a dynamic gradient scaler)."""
    autocast, needs_scaler = autocast_of(cfg, model.device)
    scaler = torch.amp.GradScaler(model.device.type) if needs_scaler else None

    def step():
        with autocast():
            losses = model(data)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def training_state_bytes(model, optimizer) -> int:
    """Bytes of the gradients and optimizer state (e.g. AdamW's two moments) held between steps: the part
    of a training step's memory that does not grow with the input."""
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v))
    return grads + state


def phase_times(model, optimizer, data, steps: int, cfg=None) -> Dict[str, float]:
    """Median seconds per phase of our MaskFormer's training step, the phases run one after another
    exactly as ``MaskFormer.forward`` does: backbone, head (pixel + query decoder), criterion (matching
    + losses), backward, optimizer step (forward phases under ``SOLVER.AMP`` autocast when ``cfg`` asks;
    float16 loss scaling is left out)."""
    device = model.device
    autocast, _ = autocast_of(cfg, device)
    rows = {k: [] for k in ("backbone", "head (pixel + query decoder)", "criterion (matcher + losses)", "backward", "optimizer step")}
    for _ in range(steps):
        t = {}
        sync(device)
        t0 = time.perf_counter()
        batched = model.flatten_pairs(data) if hasattr(model, "flatten_pairs") else data
        with autocast():
            images = model.preprocess_image(batched)
            features = model.backbone(images.tensor)
        sync(device)
        t1 = time.perf_counter()
        with autocast():
            outputs = model.sem_seg_head(features)
        sync(device)
        t2 = time.perf_counter()
        with autocast():
            losses = model.criterion(outputs, model.prepare_targets(batched, images))
        loss = sum(v * model.weight_dict[k] for k, v in losses.items() if k in model.weight_dict)
        sync(device)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t4 = time.perf_counter()
        optimizer.step()
        sync(device)
        t5 = time.perf_counter()
        for name, value in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            rows[name].append(value)
    return {k: median(v) for k, v in rows.items()}


# aten op name prefix -> category of :func:`op_categories` (first match wins; the rest is "other")
OP_CATEGORIES = (
    ("convolution", ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d", "aten::thnn_conv2d",
                     "aten::_convolution", "aten::cudnn_convolution", "aten::mkldnn_convolution_backward")),
    ("batch / group norm", ("aten::native_batch_norm", "aten::_batch_norm", "aten::batch_norm", "aten::native_group_norm",
                            "aten::_native_batch_norm_legit", "aten::group_norm")),
    ("matmul (linear, attention, mask products)", ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("optimizer (fused AdamW, clipping)", ("aten::_fused_adamw", "aten::_foreach", "aten::_fused_adam")),
    ("copies, layout, fills", ("aten::copy_", "aten::clone", "aten::contiguous", "aten::zero_", "aten::fill_", "aten::cat",
                               "aten::stack", "aten::index", "aten::gather", "aten::scatter", "aten::_to_copy", "aten::constant_pad_nd")),
    ("resampling (interpolate, grid_sample)", ("aten::upsample", "aten::grid_sampler", "aten::_upsample")),
)


def op_categories(fn: Callable) -> Dict[str, float]:
    """Self CPU seconds of one call of ``fn`` by op category (:data:`OP_CATEGORIES`, prefix match on the
    aten op name), with ``"total"``: where a step's time goes, comparable between two models."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = {name: 0.0 for name, _ in OP_CATEGORIES}
    out["other (element-wise, reductions, autograd bookkeeping)"] = 0.0
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        total += seconds
        for name, prefixes in OP_CATEGORIES:
            if event.key.startswith(prefixes):
                out[name] += seconds
                break
        else:
            out["other (element-wise, reductions, autograd bookkeeping)"] += seconds
    out["total"] = total
    return out


def profile_top_ops(fn: Callable, top: int = 10) -> str:
    """Table of the ``top`` ops by self CPU time over one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
