"""Shared test set-up: simformer is imported first so detectron2's compatibility patches are in place."""
import simformer  # noqa: F401
