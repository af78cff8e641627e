"""Utilities; ``d2compat`` holds every detectron2 / library version workaround."""
