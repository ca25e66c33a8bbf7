"""HiVG weights: CLIP towers (--clip_dir / --clip_model), whole models (--retrain / --hi_lora_retrain, ours or
official checkpoints, converted on the fly) and which tower weights train (--train_clip)."""
from __future__ import annotations

from hivg import convert
from hivg.model import HiVG
from vgcore.checkpoint import load_model_file, load_strict


def _load_whole(model: HiVG, path: str, allow_missing=(), trust_pickle: bool = False) -> dict:
    """Our model file or an official HiVG checkpoint (converted) -> ``model``, strictly; the file is read once,
    weights-only unless ``trust_pickle``.  Returns `load_model_file`'s dict plus ``missing`` (allowed keys)."""
    obj = load_model_file(path, trust_pickle=trust_pickle)
    sd = obj["model"]
    if not any(k.startswith(("fusion.", "bbox_head.")) for k in sd):  # an official checkpoint: convert first
        sd, info = convert.convert_official(obj["raw"], mixup=model.cfg.mixup_pretrain)
    missing, _ = load_strict(model, sd, allow_missing=allow_missing, what=path)
    obj["missing"] = missing
    return obj


_TRAIN_CLIP_PREFIXES = {"none": (), "text": ("text.", "text_projection"), "vision": ("vision.", "visual_projection"),
                        "all": ("",)}  # "" prefixes every name: with the stage's trainable set, everything


def load_pretrained(model: HiVG, args, logger=None) -> None:
    """--clip_dir / --clip_model (CLIP towers), then --retrain or --hi_lora_retrain (whole model)."""
    say = logger.info if logger is not None else print
    trust = bool(getattr(args, "trust_pickle", False))
    for path in (args.clip_dir, args.clip_model):
        if path:
            sd, info = convert.convert_clip(path, trust_pickle=trust)
            convert.load_clip_into(model, sd)
            say(f"loaded CLIP weights from {path} ({info.get('source')}, {len(sd)} tensors)")
    if args.retrain:
        # a --warmup model has no bridge: exactly the bridge (and adaptive-weight) parameters may be missing
        got = _load_whole(model, args.retrain, allow_missing=(r"\.bridge\.", r"adaptive", r"cross_gate"),
                          trust_pickle=trust)
        say(f"retrain: weights from {args.retrain}"
            + (f"; {len(got['missing'])} bridge parameters start from their initialisation (a --warmup model)"
               if got["missing"] else ""))
    if args.hi_lora_retrain:
        _load_whole(model, args.hi_lora_retrain, trust_pickle=trust)
        model.set_hilora_stage(args.hi_lora_stage)
        say(f"Hi LoRA stage {args.hi_lora_stage}: model from {args.hi_lora_retrain}")
    if args.hi_lora_clip:
        sd, _ = convert.convert_clip(args.hi_lora_clip, mixup=model.cfg.mixup_pretrain, trust_pickle=trust)
        convert.load_clip_into(model, sd, reinit_ml_projection=False)
        say(f"CLIP + LoRA + bridges from {args.hi_lora_clip}")
    model.compat_batch_mixing = bool(args.bridge_batch_mixing)
    towers = _TRAIN_CLIP_PREFIXES[args.train_clip]
    if towers:  # the tower weights train too; LoRA keeps its stage's rule
        for name, p in model.named_parameters():
            if name != "logit_scale" and ".lora_" not in name and name.startswith(towers):
                p.requires_grad_(True)
    if not (args.clip_dir or args.clip_model or args.retrain or args.hi_lora_retrain or args.model == "tiny"
            or getattr(args, "eval_model", "")):
        say("WARNING: no --clip_dir / --clip_model / --retrain given: the CLIP towers are randomly initialised")
