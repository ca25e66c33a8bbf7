"""ALVG weights: our files, `alvg.convert` payloads and official checkpoints, read once and loaded strictly
(``--load_from`` / ``--finetune_from`` in training, ``--load_from`` in evaluation and prediction)."""
from __future__ import annotations

from alvg import convert
from alvg.model import ALVG
from simvg.weights import state_and_config
from vgcore.checkpoint import torch_load


def read_weights(path: str, *, trust_pickle: bool = False):
    """(state dict in our layout, stored config or None, 'ours' | 'converted' | 'official') from any ALVG file
    (read once, weights-only unless ``trust_pickle``): our model file or training checkpoint, an `alvg.convert`
    payload, or an official checkpoint (``state_dict``; a ``module.`` prefix is stripped): SimVG's reader
    (`simvg.weights.state_and_config`) with ALVG's converter."""
    raw = torch_load(path, trust_pickle=trust_pickle)
    return state_and_config(raw, path, "ALVG", convert.config_from_state_dict, convert.convert_alvg_state_dict)


def load_weights_into(model: ALVG, path: str, logger=None, *, trust_pickle: bool = False) -> str:
    """Weights only: strict, the vision position table resized to the model's grid.  An official / converted
    checkpoint turns the compat switches on."""
    sd, cfg, kind = read_weights(path, trust_pickle=trust_pickle)
    convert.load_into(model, convert.adapt_img_size(sd, model.cfg), what=path)
    if kind in ("official", "converted") and cfg:
        model.set_compat(**{k: bool(cfg.get(k, False)) or v for k, v in model.cfg.compat().items()})
    if logger is not None:
        logger.info(f"weights from {path} ({kind}; compat {model.cfg.compat()})")
    return kind
