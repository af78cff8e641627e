"""CUDA-only checks (``pytest -m cuda`` on a GPU machine; skipped without CUDA): the training step does not
synchronise the host with the device, and a CUDA training step gives the CPU's losses."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model_and_batch(device, config="maskformer"):
    import _measure as M
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from simformer.engine import build_optimizer

    if config == "maskformer":
        cfg = M.build_cfg(M.R18_SYNTHETIC_CONFIG, ["MODEL.DEVICE", device])
        data = M.maskformer_batch(4, 96, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, classes_per_image=5, seed=1)
    else:  # SimFormer seg_crosim on the synthetic split: pairs, complementary and cross-image losses
        cfg = M.build_cfg(M.CROSIM_CONFIG, ["MODEL.DEVICE", device])
        novel = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).novel_class_ids
        data = M.weakshot_pair_batch(2, 96, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, novel, classes_per_image=5, seed=1)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    return model, build_optimizer(cfg, model), data


def _step(model, optimizer, data):
    losses = model(data)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("config", ["maskformer", "seg_crosim"])
def test_training_step_does_not_sync_host_and_device(config):
    model, optimizer, data = _model_and_batch("cuda", config)
    _step(model, optimizer, data)  # lazy initialisations happen once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(model, optimizer, data)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_step_gives_the_cpu_losses():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu_model, cpu_opt, data = _model_and_batch("cpu")
    gpu_model, gpu_opt, _ = _model_and_batch("cuda")
    gpu_model.load_state_dict(cpu_model.state_dict())
    for step in range(3):
        torch.manual_seed(step)
        a = float(_step(cpu_model, cpu_opt, data))
        torch.manual_seed(step)
        b = float(_step(gpu_model, gpu_opt, data))
        assert abs(a - b) <= (1e-3 if step == 0 else 2e-2) * abs(a), (step, a, b)
