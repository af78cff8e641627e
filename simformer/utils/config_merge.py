"""Merge a config file and command-line overrides with errors that name the key and suggest the right one,
reading renamed keys of older configs.

yacs reports a misspelled key as ``KeyError: 'Non-existent config key: X'`` (file) or
``AssertionError: Non-existent key: X`` (command line). :func:`merge_config` raises
:class:`ConfigKeyError` (a ``KeyError``) saying where the key came from and the closest valid keys.

Renamed keys (:data:`RENAMED_KEYS`, old -> new; detectron2's ``config/compat.py`` does the same for its own
versions) are still read from files and command lines: the value goes to the new key and a warning names
both, once per key and process.
"""
import difflib
import logging
import re

__all__ = ["ConfigKeyError", "merge_config", "all_config_keys", "RENAMED_KEYS", "upgrade_renamed_keys"]

logger = logging.getLogger(__name__)

# old name -> new name
RENAMED_KEYS = {
    "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_LOSS": "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_LOSS": "MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_WEIGHT",
    "MODEL.CCS.TAU": "MODEL.CCS.INIT_TEMPERATURE",
    "INPUT.SIZE_DIVISIBILITY": "INPUT.PAD_TO_SIZE",
}
_warned = set()


def _warn_renamed(old, source):
    if old not in _warned:
        _warned.add(old)
        logger.warning(f"{source}: config key {old} is now {RENAMED_KEYS[old]}; the old name is still read, please rename it")


def upgrade_renamed_keys(tree, source, prefix=""):
    """Move the values of renamed keys in a nested dict (a loaded YAML, bases merged) to their new names,
    in place; a value under an old name replaces one under the new name."""
    for key in list(tree):
        name = prefix + key
        if isinstance(tree[key], dict):
            upgrade_renamed_keys(tree[key], source, name + ".")
        elif name in RENAMED_KEYS:
            new = RENAMED_KEYS[name]
            if not new.startswith(prefix):
                raise ValueError(f"renamed key {name} -> {new} moves to another node")
            # the old name wins: the shipped configs use only new names, so an old one comes from the user's
            # (derived) file, whose _BASE_ may set the new name
            tree[new[len(prefix):]] = tree.pop(key)
            _warn_renamed(name, source)
    return tree


def _upgrade_opts(opts, source):
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        if out[i] in RENAMED_KEYS:
            _warn_renamed(out[i], source)
            out[i] = RENAMED_KEYS[out[i]]
    return out

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


def _merge_file(cfg, config_file):
    """``cfg.merge_from_file`` with :data:`RENAMED_KEYS` upgraded (configs of the current VERSION; others
    go through detectron2's own version upgrade)."""
    import os

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file '{config_file}' does not exist")
    loaded = cfg.load_yaml_with_base(config_file, allow_unsafe=True)
    if loaded.get("VERSION", cfg.get("VERSION")) != cfg.get("VERSION"):
        return cfg.merge_from_file(config_file)
    upgrade_renamed_keys(loaded, f"config file '{config_file}'")
    cfg.merge_from_other_cfg(type(cfg)(loaded))


def merge_config(cfg, config_file=None, opts=()):
    """``cfg.merge_from_file(config_file)`` then ``cfg.merge_from_list(opts)``, with clear unknown-key errors
    and renamed keys read under their new names."""
    if config_file:
        try:
            _merge_file(cfg, config_file)
        except (KeyError, AssertionError) as e:
            err = _unknown_key_error(cfg, e, f"config file '{config_file}' (or a _BASE_ file it includes)")
            if err is None:
                raise
            raise err from None
    if opts:
        if len(opts) % 2:
            raise ValueError(f"command-line options must be KEY VALUE pairs; got an odd number ({len(opts)}): {list(opts)}")
        try:
            cfg.merge_from_list(_upgrade_opts(opts, "command-line options"))
        except (KeyError, AssertionError) as e:
            err = _unknown_key_error(cfg, e, "command-line options")
            if err is None:
                raise
            raise err from None
    return cfg
