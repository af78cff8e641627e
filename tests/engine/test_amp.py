"""Mixed precision through torch.autocast (SOLVER.AMP.ENABLED / SOLVER.AMP.DTYPE), tested on CPU with bf16:
the trainer runs the forward pass under autocast on the model's device and steps the optimizer; the
criterion (matching costs + losses) and semantic inference stay fp32; float16 without CUDA is refused."""
import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

import simformer.engine.amp as amp_module
from simformer.engine.amp import AutocastTrainer, amp_dtype
from simformer.modeling.criterion import SetCriterion
from simformer.modeling.matcher import HungarianMatcher
from tests.engine.test_reliability import _tiny_cfg


class _Recorder(nn.Module):
    """A linear model returning {"loss": ...}; records the autocast state and dtype seen in forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.seen = []

    def forward(self, batch):
        out = self.linear(batch)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return {"loss": out.float().pow(2).mean()}


def _loader():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(8, 4, generator=g)


def test_autocast_trainer_runs_the_forward_in_bf16_and_steps():
    model = _Recorder()
    before = model.linear.weight.detach().clone()
    trainer = AutocastTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), dtype="bfloat16")
    assert trainer.device_type == "cpu" and trainer.grad_scaler is None  # no scaler for bf16
    trainer.iter = 0
    with EventStorage(0):
        trainer.run_step()
    assert model.seen == [(True, torch.bfloat16)]
    assert model.linear.weight.dtype == torch.float32  # parameters stay fp32
    assert not torch.equal(model.linear.weight, before)
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the forward pass
    assert "grad_scaler" not in trainer.state_dict()


def test_float16_needs_cuda_and_dtype_names_are_checked():
    model = _Recorder()
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE 'float16' needs a CUDA model"):
        AutocastTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), dtype="float16")
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE must be one of"):
        amp_dtype("half")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_kernels_warns_once_at_start(native, monkeypatch, caplog):
    monkeypatch.setattr(amp_module, "cpu_has_native_bf16", lambda: native)
    model = _Recorder()
    with caplog.at_level("WARNING", logger="simformer.engine.amp"):
        AutocastTrainer(model, _loader(), torch.optim.SGD(model.parameters(), lr=0.1), dtype="bfloat16")
    warned = [r for r in caplog.records if "without native bf16 kernels" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    if warned:
        assert "SOLVER.AMP.ENABLED False" in warned[0].getMessage()


def test_cpu_has_native_bf16_agrees_with_onednn():
    expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert amp_module.cpu_has_native_bf16() is expected


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 + GradScaler needs CUDA")
def test_float16_on_cuda_uses_a_grad_scaler_saved_with_the_trainer():
    model = _Recorder().cuda()
    loader = (x.cuda() for x in _loader())
    trainer = AutocastTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), dtype="float16")
    trainer.iter = 0
    with EventStorage(0):
        trainer.run_step()
    assert model.seen[-1][1] == torch.float16
    assert "grad_scaler" in trainer.state_dict()


def test_criterion_and_semantic_inference_stay_fp32_under_autocast():
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 4, 4, generator=g), "pred_masks": torch.randn(2, 4, 8, 8, generator=g)}
    masks = (torch.rand(2, 16, 16, generator=g) > 0.5).float()
    targets = [{"labels": torch.tensor([0, 2]), "masks": masks}, {"labels": torch.tensor([1]), "masks": masks[:1]}]
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    reference = criterion(outputs, targets)
    half = {k: v.bfloat16() for k, v in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(half, targets)
    ref_half = criterion({k: v.float() for k, v in half.items()}, targets)
    for k, v in losses.items():
        assert v.dtype == torch.float32, k
        assert torch.equal(v, ref_half[k]), k  # exactly the fp32 computation on the rounded inputs
        assert torch.allclose(v, reference[k], rtol=0.05), k


def test_amp_training_on_cpu_with_bf16(tmp_path, name):
    from simformer.engine import Trainer

    cfg = _tiny_cfg(tmp_path, name, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.AMP.ENABLED", "True")
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AutocastTrainer) and trainer._trainer.dtype == torch.bfloat16
    assert trainer.cfg.SOLVER.AMP.ENABLED
    seen = []
    head = trainer.model.sem_seg_head
    head.register_forward_hook(lambda m, i, o: seen.append(o["pred_masks"].dtype))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert seen == [torch.bfloat16, torch.bfloat16]  # the network ran in bf16
    total = trainer.storage.history("total_loss").values()
    assert len(total) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in total)
    # the model's own inference gives fp32 scores under autocast
    model = trainer.model.eval()
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([{"image": image}])[0]["sem_seg"]
    assert out.dtype == torch.float32 and out.shape == (3, 64, 64)
    with torch.no_grad():
        ref = model([{"image": image}])[0]["sem_seg"]
    assert (out.argmax(0) == ref.argmax(0)).float().mean() > 0.9

