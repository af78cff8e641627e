"""Mixed-precision training with ``torch.autocast`` on any device and any detectron2 version.

detectron2 0.6's ``AMPTrainer`` is CUDA-only and builds its scaler with the deprecated
``torch.cuda.amp`` API. :class:`AutocastTrainer` replaces it (``SOLVER.AMP.ENABLED``): the forward pass
runs under ``torch.autocast(device_type=<the model's device>, dtype=SOLVER.AMP.DTYPE)``; the loss terms
are checked before backward as in :mod:`.nonfinite`; with float16 on CUDA the backward pass is scaled by a
dynamic ``torch.amp.GradScaler`` (saved in checkpoints), bfloat16 needs no scaling. The numerically
sensitive parts opt out of autocast themselves: the criterion (matching costs, losses) runs in fp32
(:class:`~simformer.modeling.criterion.SetCriterion`), and so does semantic inference
(:meth:`~simformer.model.MaskFormer.inference`).

bfloat16 on a CPU is only fast where oneDNN has native bf16 kernels (AVX-512 BF16 / AMX):
:func:`cpu_has_native_bf16`. Elsewhere PyTorch runs bf16 convolutions through its reference kernel and
bf16 matmuls without MKL (measured on an AVX2-only EPYC: a 3x3 convolution 13x, a 512² matmul 67x, the
synthetic benchmark's training step 14x slower than fp32), so :class:`AutocastTrainer` warns once.
"""
import logging

import torch
from detectron2.engine import SimpleTrainer

from .nonfinite import _checked_forward

__all__ = ["AMP_DTYPES", "AutocastTrainer", "amp_dtype", "cpu_has_native_bf16", "model_device_type"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(name: str) -> torch.dtype:
    """``SOLVER.AMP.DTYPE`` -> torch dtype (error naming the key otherwise)."""
    if name not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}, got {name!r}")
    return AMP_DTYPES[name]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU and PyTorch build run bf16 convolutions / matmuls with oneDNN's native kernels
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; False where the op is missing)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def model_device_type(model: torch.nn.Module) -> str:
    """"cuda" / "cpu" / ... of the model's parameters (DDP-wrapped or not)."""
    param = next(iter(model.parameters()), None)
    return param.device.type if param is not None else "cpu"


class AutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward pass runs under ``torch.autocast`` (module doc).

    Args:
        model, data_loader, optimizer: as :class:`SimpleTrainer`.
        dtype: "bfloat16" or "float16" (``SOLVER.AMP.DTYPE``); float16 needs a CUDA model.
    """

    def __init__(self, model, data_loader, optimizer, dtype: str = "bfloat16"):
        super().__init__(model, data_loader, optimizer)
        self.dtype = amp_dtype(dtype)
        self.device_type = model_device_type(model)
        self.grad_scaler = None
        if self.dtype == torch.float16:
            if self.device_type != "cuda":
                raise ValueError(f"SOLVER.AMP.DTYPE 'float16' needs a CUDA model (loss scaling); the model is on {self.device_type!r}: use 'bfloat16'")
            self.grad_scaler = torch.amp.GradScaler("cuda")
        if self.dtype == torch.bfloat16 and self.device_type == "cpu" and not cpu_has_native_bf16():
            logger.warning(
                "SOLVER.AMP.ENABLED with bfloat16 on a CPU without native bf16 kernels (oneDNN reports none; "
                f"CPU capability {torch.backends.cpu.get_cpu_capability()}): convolutions and matmuls fall back "
                "to slow reference code (about 14x slower training steps measured on an AVX2 CPU). "
                "Set SOLVER.AMP.ENABLED False on this machine."
            )

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        autocast = torch.autocast(device_type=self.device_type, dtype=self.dtype)
        losses, loss_dict, data_time = _checked_forward(self, autocast)
        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()
        else:
            self.grad_scaler.scale(losses).backward()
            self._write_metrics(loss_dict, data_time)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
