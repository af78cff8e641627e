"""Checkpoints that survive a kill, and the RNG state that goes into them.

:class:`AtomicCheckpointer` is detectron2's ``DetectionCheckpointer`` with

* atomic writes: ``save`` writes ``<name>.pth`` into a temporary file in the same folder, flushes and
  fsyncs it, ``os.replace``-s it over the target and fsyncs the folder; only then is ``last_checkpoint``
  rewritten, the same way. A kill at any moment leaves the previous checkpoint loadable and
  ``last_checkpoint`` naming a complete file (at worst a stray ``.<name>.pth.<pid>.tmp`` stays behind;
  the next save in that folder removes it);
* clear load errors: a missing ``MODEL.WEIGHTS`` file, or a ``last_checkpoint`` naming a missing file,
  raises ``FileNotFoundError`` naming the path;
* a shape policy: parameters whose shape differs between checkpoint and model (weights for another
  number of classes) are an error when ``strict_shapes`` (resuming, ``--eval-only``), and otherwise one
  warning listing every skipped key (fine-tuning from weights of another label set).

:func:`capture_rng_states` / :func:`restore_rng_states`: Python ``random``, NumPy's global generator,
torch CPU and (when initialised) CUDA generators.
"""
import glob
import logging
import os
import pickle
import random

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_io import TMP_SUFFIX as _TMP_SUFFIX
from ..utils.atomic_io import atomic_write

__all__ = ["AtomicCheckpointer", "atomic_write", "capture_rng_states", "restore_rng_states", "ShapeMismatchError"]

logger = logging.getLogger(__name__)



class ShapeMismatchError(ValueError):
    """Checkpoint tensors whose shapes differ from the model's (e.g. another ``NUM_CLASSES``)."""




def _is_local(path):
    return "://" not in str(path)


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` / ``tag_last_checkpoint``, clear errors for missing
    files and a shape-mismatch policy (see the module doc).

    Args:
        strict_shapes: raise :class:`ShapeMismatchError` when a checkpoint tensor's shape differs from
            the model's (instead of skipping it with a warning). Can be changed later (attribute).
        Other arguments: those of ``DetectionCheckpointer``.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, strict_shapes=False, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict_shapes = strict_shapes

    # -------------------------------------------------------------------------------- saving
    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):  # remote storage: no rename semantics, use the default path
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must be a file name, not a path")
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_stale_temporaries()
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename), mode="w")

    def _remove_stale_temporaries(self):
        """Temporary files of this folder left by a killed process (never those of a live one)."""
        for tmp in glob.glob(os.path.join(glob.escape(self.save_dir), "." + "*" + _TMP_SUFFIX)):
            parts = os.path.basename(tmp).rsplit(".", 3)  # .<name>.<pid>.<random>.tmp
            try:
                pid = int(parts[-3])
            except (ValueError, IndexError):
                continue
            if pid == os.getpid() or _pid_alive(pid):
                continue
            try:
                os.remove(tmp)
                self.logger.info(f"Removed the partial checkpoint {tmp} of a killed run")
            except OSError:
                pass

    # -------------------------------------------------------------------------------- loading
    def resume_or_load(self, path, *, resume=True):
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if _is_local(last) and not os.path.isfile(last):
                raise FileNotFoundError(
                    f"'{os.path.join(self.save_dir, 'last_checkpoint')}' names checkpoint '{last}', which does not exist; "
                    "restore that file, point last_checkpoint at an existing model_*.pth, or start without --resume"
                )
            return self.load(last)
        if path and _is_local(path) and not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.WEIGHTS: checkpoint file '{path}' does not exist; expected a .pth/.pkl weights file (or '' for no weights)")
        return self.load(path, checkpointables=[])

    def load(self, path, *args, **kwargs):
        if path and _is_local(path) and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except FileNotFoundError:
            raise
        except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError) as e:  # torch.load on a bad file
            raise ValueError(f"checkpoint file '{filename}' cannot be read ({type(e).__name__}: {e}); expected a complete checkpoint (.pth) -- is it truncated?") from e

    def _load_model(self, checkpoint):
        checkpoint["model"] = upgrade_state_keys(checkpoint["model"], self.logger)
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None and incompatible.incorrect_shapes:
            lines = [f"  {k}: {tuple(c)} in the checkpoint, {tuple(m)} in the model" for k, c, m in incompatible.incorrect_shapes]
            where = f"checkpoint '{getattr(self, '_loading', None) or '?'}'"
            hint = "weights for another number of classes? check MODEL.SEM_SEG_HEAD.NUM_CLASSES against the checkpoint"
            if self.strict_shapes:
                raise ShapeMismatchError(f"{where} does not fit the model ({hint}):\n" + "\n".join(lines))
            self.logger.warning(
                f"{where}: skipped {len(lines)} tensor(s) whose shape differs from the model (left at their "
                f"initialisation; expected when fine-tuning on another label set, else {hint}):\n" + "\n".join(lines)
            )
            incompatible = incompatible._replace(incorrect_shapes=[])  # already reported, in one message
        return incompatible


def upgrade_state_keys(state, logger=None):
    """Rename the keys of checkpoints written before the loss terms owned their modules
    (:data:`~simformer.modeling.build_criterion.LEGACY_STATE_PREFIXES`, e.g. ``criterion.simnet.*`` ->
    ``criterion.terms.cross_image.simnet.*``); other keys unchanged."""
    from ..modeling.build_criterion import LEGACY_STATE_PREFIXES

    renamed, out = 0, type(state)()
    for key, value in state.items():
        for old, new in LEGACY_STATE_PREFIXES.items():
            if key.startswith(old):
                key, renamed = new + key[len(old):], renamed + 1
                break
        out[key] = value
    if renamed and logger is not None:
        logger.info(f"checkpoint: {renamed} criterion tensors renamed to their current names (criterion.terms.*)")
    return out


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------
def capture_rng_states():
    """``{"python", "numpy", "torch", "cuda"}``: states of the global generators (``cuda`` only when
    CUDA is initialised), as tensors / lists / numbers only, so that ``torch.load(weights_only=True)``
    reads them."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(states):
    """Inverse of :func:`capture_rng_states` (a missing entry leaves that generator alone)."""
    if not states:
        return
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    if "torch" in states:
        torch.set_rng_state(torch.as_tensor(states["torch"], dtype=torch.uint8).cpu())
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(f"checkpoint has CUDA RNG states of {len(cuda)} devices, this process sees {torch.cuda.device_count()}; not restored")
