"""Command-line tools (console scripts declared in setup.py; each also runs as ``python -m simformer.tools.<name>``).

Submodules are imported on demand only (no heavy imports here).
"""
