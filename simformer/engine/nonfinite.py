"""Stop (or skip) a training step whose loss is NaN / inf *before* its backward pass.

detectron2's ``SimpleTrainer`` notices a non-finite loss only in ``_write_metrics``, after
``backward()`` and just before ``optimizer.step()`` (the sum of the terms, without names). The trainers
here check every loss term right after the forward pass and raise :class:`NonFiniteLossError` (a
``FloatingPointError``) naming the offending terms and the iteration, so the parameters, optimizer state
and schedule are still those from before the step. In a multi-process run the processes agree (one
all-reduce of a flag per step), so all stop or skip together. The model's buffers (BatchNorm running
statistics, SimNet's pair-balance counts), which the forward pass of the bad step has already updated, are
put back to their values from before the step (a copy of the buffers is taken before every forward
pass). :class:`~simformer.engine.Trainer` turns the
error into a checkpoint + stop, or a skipped step (``SOLVER.SKIP_NONFINITE_STEPS``).
"""
import time

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from ..utils import d2compat

__all__ = ["NonFiniteLossError", "nonfinite_terms", "check_losses", "GuardedSimpleTrainer"]


class NonFiniteLossError(FloatingPointError):
    """Raised before backward when a loss term is NaN or inf.

    Attributes: ``iteration``; ``terms``: ``{name: value}`` of the non-finite terms of this process;
    ``ranks``: the processes that saw one (all processes raise)."""

    def __init__(self, iteration, terms, ranks=(0,)):
        self.iteration, self.terms, self.ranks = int(iteration), dict(terms), tuple(ranks)
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.terms.items())) or "(on another process)"
        where = "" if self.ranks == (0,) and comm.get_world_size() == 1 else f" (processes {list(self.ranks)})"
        super().__init__(f"non-finite loss at iteration {self.iteration}: {shown}{where}")


def nonfinite_terms(loss_dict):
    """``{name: float}`` of the loss terms that are not finite (one host sync for all of them)."""
    if not loss_dict:
        return {}
    names = list(loss_dict)
    values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in names]).cpu()
    bad = ~torch.isfinite(values)
    return {names[i]: float(values[i]) for i in torch.nonzero(bad).flatten().tolist()}


def check_losses(loss_dict, iteration):
    """Raise :class:`NonFiniteLossError` (on every process) when any process has a non-finite term."""
    bad = nonfinite_terms(loss_dict)
    ranks = [comm.get_rank()] if bad else []
    if comm.get_world_size() > 1 and dist.is_initialized():
        device = next(iter(loss_dict.values())).device if loss_dict else torch.device("cpu")
        if dist.get_backend() == "gloo":
            device = torch.device("cpu")
        flag = torch.tensor([1.0 if bad else 0.0], device=device)
        dist.all_reduce(flag)
        if float(flag) == 0:
            return
        gathered = comm.all_gather((comm.get_rank(), bad))
        ranks = [r for r, b in gathered if b]
        bad = bad or {k: v for _, b in gathered for k, v in b.items()}
    if bad:
        raise NonFiniteLossError(iteration, bad, ranks)


class _BufferSnapshot:
    """Copies of a module's buffers, to undo what a forward pass did to them."""

    def __init__(self, module):
        with torch.no_grad():
            self.saved = [(b, b.detach().clone()) for b in module.buffers()]

    def restore(self):
        with torch.no_grad():
            for buf, saved in self.saved:
                buf.copy_(saved)


def _total(loss_dict):
    if isinstance(loss_dict, torch.Tensor):
        return loss_dict, {"total_loss": loss_dict}
    return sum(loss_dict.values()), loss_dict


def _checked_forward(trainer, autocast_ctx=None):
    """Next batch -> (total loss, loss dict, data time), with the loss terms checked before any backward;
    on a non-finite term the model's buffers are put back and :class:`NonFiniteLossError` is raised."""
    start = time.perf_counter()
    data = d2compat.next_batch(trainer)
    data_time = time.perf_counter() - start
    buffers = _BufferSnapshot(trainer.model)
    if autocast_ctx is None:
        losses, loss_dict = _total(trainer.model(data))
    else:
        with autocast_ctx:
            losses, loss_dict = _total(trainer.model(data))
    try:
        check_losses(loss_dict, trainer.iter)
    except NonFiniteLossError:
        buffers.restore()
        raise
    return losses, loss_dict, data_time


class GuardedSimpleTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose ``run_step`` checks the loss terms before ``backward`` (module doc)."""

    def run_step(self):
        assert self.model.training, "[GuardedSimpleTrainer] model was changed to eval mode!"
        losses, loss_dict, data_time = _checked_forward(self)
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
