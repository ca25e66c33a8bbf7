"""The checkpoint toolkit every method uses.

* `safe`: reading files without running code from them -- `torch_load` (``weights_only=True`` plus a small
  safelist; full unpickling only with ``trust_pickle=True`` / ``--trust_pickle``), `load_plain_pickle`
  (pickles by format: builtin containers, strings, numbers, optionally numpy arrays), `UntrustedFileError`.
* `keys`: `unwrap` (``model`` / ``state_dict`` / ``module`` / EMA nesting, DDP ``module.`` prefixes),
  `strip_prefix`, and rule tables `Rules` applied by `convert_state_dict` with a `ConversionReport`
  (renamed / dropped / unmatched / missing / unexpected keys).
* `resample`: `resample_pos_table` (1-D or 2-D grids, prefix rows kept) and `resample_patch_kernel`.
* `strict`: `load_strict` -- loads or raises one `StateDictMismatchError` listing missing, unexpected and
  mis-shaped keys grouped by pattern (no silent ``strict=False``).
* `training`: our own files -- `atomic_save`, `save_checkpoint` / `load_checkpoint` (exact resume),
  `save_model` / `load_model_file` (model files).

A method's loader for an official checkpoint is a rule table over these::

    raw = torch_load(path, trust_pickle=args.trust_pickle)
    sd, report = convert_state_dict(unwrap(raw), RULES, expected_keys=model.state_dict())
    report.check(what=path)
    load_strict(model, sd, what=path)
"""
from .keys import ConversionError, ConversionReport, Rules, convert_state_dict, strip_prefix, unwrap, unwrap_checkpoint
from .resample import resample_patch_kernel, resample_pos_table
from .safe import SAFE_GLOBALS, UntrustedFileError, load_plain_pickle, torch_load
from .strict import StateDictMismatchError, check_state_dict, group_keys, load_strict
from .training import (FORMAT, MODEL_FORMAT, atomic_save, get_rng_state, load_checkpoint, load_model_file,
                       save_checkpoint, save_model, set_rng_state)

__all__ = [
    "torch_load", "load_plain_pickle", "UntrustedFileError", "SAFE_GLOBALS",
    "unwrap", "unwrap_checkpoint", "strip_prefix", "Rules", "convert_state_dict", "ConversionReport",
    "ConversionError", "resample_pos_table", "resample_patch_kernel",
    "load_strict", "check_state_dict", "StateDictMismatchError", "group_keys",
    "atomic_save", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state", "save_model",
    "load_model_file", "FORMAT", "MODEL_FORMAT",
]
