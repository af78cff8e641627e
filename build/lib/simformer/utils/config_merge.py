"""Merge a config file and command-line overrides with errors that name the key and suggest the right one.

yacs reports a misspelled key as ``KeyError: 'Non-existent config key: X'`` (file) or
``AssertionError: Non-existent key: X`` (command line). :func:`merge_config` raises
:class:`ConfigKeyError` (a ``KeyError``) saying where the key came from and the closest valid keys.
"""
import difflib
import re

__all__ = ["ConfigKeyError", "merge_config", "all_config_keys"]

_NON_EXISTENT = re.compile(r"Non-existent (?:config )?key: ([A-Za-z0-9_.]+)")


class ConfigKeyError(KeyError):
    """Unknown config key (message not wrapped in quotes, unlike ``KeyError``)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def all_config_keys(cfg, prefix=""):
    """Every leaf key of a ``CfgNode`` as a dotted name."""
    keys = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            keys.extend(all_config_keys(v, name + "."))
        else:
            keys.append(name)
    return keys


def _unknown_key_error(cfg, exc, source):
    match = _NON_EXISTENT.search(str(exc))
    if not match:
        return None
    key = match.group(1)
    valid = all_config_keys(cfg)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # same parent, similar leaf name
        parent, _, leaf = key.rpartition(".")
        siblings = [k for k in valid if k.rpartition(".")[0] == parent]
        close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(leaf, [s.rpartition(".")[2] for s in siblings], n=3)]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; it is neither a detectron2 key nor one of simformer/config.py"
    return ConfigKeyError(f"{source}: unknown config key {key!r}{hint}")


def merge_config(cfg, config_file=None, opts=()):
    """``cfg.merge_from_file(config_file)`` then ``cfg.merge_from_list(opts)``, with clear unknown-key errors."""
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError) as e:
            err = _unknown_key_error(cfg, e, f"config file '{config_file}' (or a _BASE_ file it includes)")
            if err is None:
                raise
            raise err from None
    if opts:
        if len(opts) % 2:
            raise ValueError(f"command-line options must be KEY VALUE pairs; got an odd number ({len(opts)}): {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            err = _unknown_key_error(cfg, e, "command-line options")
            if err is None:
                raise
            raise err from None
    return cfg
