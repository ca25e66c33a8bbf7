"""SimVG weights: our files, `simvg.convert` payloads and official checkpoints, read once and loaded strictly
(``--load_from`` / ``--finetune_from`` / ``--load_from`` at evaluation)."""
from __future__ import annotations

from simvg import convert
from simvg.model import SimVG
from vgcore.checkpoint import ConversionError, group_keys, torch_load, unwrap


def read_weights(path: str, use_ema: bool = False, *, trust_pickle: bool = False):
    """(state dict in our layout, stored config or None, 'ours' | 'converted' | 'official') from any SimVG file
    (read once, weights-only unless ``trust_pickle``): our `save_model` file or training checkpoint
    (``use_ema``: its ``ema`` shadow), a `simvg.convert` payload, or an official det_best.pth (``use_ema``: its
    ``ema_state_dict``; a ``module.`` prefix is stripped)."""
    raw = torch_load(path, trust_pickle=trust_pickle)
    return state_and_config(raw, path, "SimVG", convert.config_from_state_dict, convert.convert_simvg_state_dict,
                            lambda r: convert.read_simvg_checkpoint(r, use_ema=use_ema), use_ema)


def state_and_config(raw, path: str, method: str, config_from_state_dict, convert_state_dict, official_reader=None,
                     use_ema: bool = False):
    """`read_weights` of a loaded file ``raw``, for SimVG and the methods built on it: ``config_from_state_dict``
    and ``convert_state_dict`` are the method's converter functions; ``official_reader(raw)`` reads an official
    ``state_dict`` / ``ema_state_dict`` file (None: such a file is unwrapped as it is)."""
    cfg = None
    if official_reader is not None and isinstance(raw, dict) and ("state_dict" in raw or "ema_state_dict" in raw) \
            and "model" not in raw:
        sd = official_reader(raw)
    elif isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        cfg = raw.get("config")
        if cfg is None and isinstance(raw.get("extra"), dict):
            cfg = raw["extra"].get("config")
        sd = raw["model"]
        if use_ema and isinstance(raw.get("ema"), dict) and "shadow" in raw["ema"]:
            sd = raw["ema"]["shadow"]  # a training checkpoint of an --ema run
    else:
        sd = unwrap(raw)
    sd = unwrap(sd)
    if not any(k.startswith("vis_enc.") for k in sd):
        kind = "converted" if isinstance(raw, dict) and "compat" in raw else "ours"
        if kind == "converted" and isinstance(cfg, dict):
            cfg = dict(cfg, **raw["compat"])
        return sd, cfg if isinstance(cfg, dict) else None, kind
    cfg = config_from_state_dict(sd)
    sd, rep = convert_state_dict(sd)
    if rep["unmapped"]:
        raise ConversionError(f"{path}: official {method} checkpoint with keys no rule maps:\n  "
                              + "\n  ".join(group_keys(rep["unmapped"])))
    cfg.update(rep["compat"])
    return sd, cfg, "official"


def load_weights_into(model: SimVG, path: str, logger=None, use_ema: bool = False, *,
                      trust_pickle: bool = False) -> str:
    """Weights only (``--load_from`` / ``--finetune_from``): strict, the vision position table resized to the
    model's grid (512 -> 640 px).  An official / converted checkpoint turns the compat switches on."""
    sd, cfg, kind = read_weights(path, use_ema=use_ema, trust_pickle=trust_pickle)
    sd = convert.adapt_img_size(sd, model.cfg)
    convert.load_into(model, sd, what=path)
    if kind in ("official", "converted") and cfg:
        model.set_compat(**{k: bool(cfg.get(k, False)) or getattr(model.cfg, k)
                            for k in ("text_maxpool_int64_mask", "text_pos_embed_1d_degenerate")})
    if logger is not None:
        logger.info(f"weights from {path} ({kind}; compat {compat_of(model)})")
    return kind


def compat_of(model: SimVG) -> dict:
    return {k: bool(getattr(model.cfg, k)) for k in ("text_maxpool_int64_mask", "text_pos_embed_1d_degenerate")}
