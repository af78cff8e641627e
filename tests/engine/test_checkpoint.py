"""AtomicCheckpointer: a crash or a kill while a checkpoint is written leaves the previous checkpoint
loadable and ``last_checkpoint`` naming a complete file; RNG states survive a save / load."""
import io
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from simformer.engine.checkpoint import AtomicCheckpointer, capture_rng_states, restore_rng_states

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(value):
    model = nn.Linear(64, 64)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def _last(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read().strip()


def _check_previous_intact(folder, value):
    assert _last(folder) == "model_0000000.pth"
    assert not os.path.exists(os.path.join(folder, "model_0000001.pth"))
    fresh = _model(-1.0)
    AtomicCheckpointer(fresh, folder).resume_or_load("", resume=True)
    assert torch.all(fresh.weight == value) and torch.all(fresh.bias == value)
    torch.load(os.path.join(folder, "model_0000000.pth"), weights_only=True)  # complete, plain tensors


def test_save_is_atomic_and_tags_last(tmp_path):
    folder = str(tmp_path)
    ckpt = AtomicCheckpointer(_model(1.0), folder)
    ckpt.save("model_0000000", iteration=0)
    assert _last(folder) == "model_0000000.pth"
    assert sorted(os.listdir(folder)) == ["last_checkpoint", "model_0000000.pth"]  # no temporary left
    mode = os.stat(os.path.join(folder, "model_0000000.pth")).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch, error):
    folder = str(tmp_path)
    model = _model(1.0)
    ckpt = AtomicCheckpointer(model, folder)
    ckpt.save("model_0000000")
    with torch.no_grad():
        model.weight.fill_(2.0)
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise error

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(type(error)):
        ckpt.save("model_0000001")
    monkeypatch.undo()
    _check_previous_intact(folder, 1.0)
    assert sorted(os.listdir(folder)) == ["last_checkpoint", "model_0000000.pth"]


def test_crash_while_tagging_keeps_last_checkpoint_valid(tmp_path, monkeypatch):
    import simformer.engine.checkpoint as checkpoint

    folder = str(tmp_path)
    ckpt = AtomicCheckpointer(_model(1.0), folder)
    ckpt.save("model_0000000")
    real = checkpoint.atomic_write

    def fail_on_tag(path, write_fn, mode="wb"):
        if os.path.basename(path) == "last_checkpoint":
            raise OSError("killed while tagging")
        return real(path, write_fn, mode)

    monkeypatch.setattr(checkpoint, "atomic_write", fail_on_tag)
    with pytest.raises(OSError):
        ckpt.save("model_0000001")
    assert _last(folder) == "model_0000000.pth"  # still names a complete file (model_0000001.pth is complete too)
    torch.load(os.path.join(folder, "model_0000001.pth"), weights_only=True)


CHILD = """
import io, os, signal, sys
sys.path.insert(0, {repo!r})
import torch
from torch import nn
from simformer.engine.checkpoint import AtomicCheckpointer
model = nn.Linear(64, 64)
with torch.no_grad():
    model.weight.fill_(1.0); model.bias.fill_(1.0)
ckpt = AtomicCheckpointer(model, {folder!r})
ckpt.save("model_0000000")
with torch.no_grad():
    model.weight.fill_(2.0)
real_save = torch.save
def half_then_die(obj, f, *a, **k):
    buf = io.BytesIO(); real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)   # killed in the middle of the write
torch.save = half_then_die
ckpt.save("model_0000001")
"""


def test_kill_during_write_in_a_real_process(tmp_path):
    folder = str(tmp_path / "out")
    os.makedirs(folder)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=REPO, folder=folder))
    proc = subprocess.run([sys.executable, str(script)], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _check_previous_intact(folder, 1.0)
    stale = [f for f in os.listdir(folder) if f.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".model_0000001.pth.")  # the half-written temporary
    AtomicCheckpointer(_model(3.0), folder).save("model_0000002")  # the next save removes it (its process is dead)
    assert sorted(os.listdir(folder)) == ["last_checkpoint", "model_0000000.pth", "model_0000002.pth"]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    states = capture_rng_states()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = str(tmp_path / "rng.pth")
    torch.save({"rng": states}, path)
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng_states(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
