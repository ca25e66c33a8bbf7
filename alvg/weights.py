"""ALVG weights: our files, `alvg.convert` payloads and official checkpoints, read once and loaded strictly
(``--load_from`` / ``--finetune_from`` in training, ``--load_from`` in evaluation and prediction)."""
from __future__ import annotations

from alvg import convert
from alvg.model import ALVG
from vgcore.checkpoint import ConversionError, group_keys, torch_load, unwrap


def read_weights(path: str, *, trust_pickle: bool = False):
    """(state dict in our layout, stored config or None, 'ours' | 'converted' | 'official') from any ALVG file
    (read once, weights-only unless ``trust_pickle``): our model file or training checkpoint, an `alvg.convert`
    payload, or an official checkpoint (``state_dict``; a ``module.`` prefix is stripped)."""
    raw = torch_load(path, trust_pickle=trust_pickle)
    cfg = None
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        cfg = raw.get("config")
        if cfg is None and isinstance(raw.get("extra"), dict):
            cfg = raw["extra"].get("config")
        sd = unwrap(raw["model"])
    else:
        sd = unwrap(raw)
    if not any(k.startswith("vis_enc.") for k in sd):
        kind = "converted" if isinstance(raw, dict) and "compat" in raw else "ours"
        if kind == "converted" and isinstance(cfg, dict):
            cfg = dict(cfg, **raw["compat"])
        return sd, cfg if isinstance(cfg, dict) else None, kind
    cfg = convert.config_from_state_dict(sd)
    sd, rep = convert.convert_alvg_state_dict(sd)
    if rep["unmapped"]:
        raise ConversionError(f"{path}: official ALVG checkpoint with keys no rule maps:\n  "
                              + "\n  ".join(group_keys(rep["unmapped"])))
    cfg.update(rep["compat"])
    return sd, cfg, "official"


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
