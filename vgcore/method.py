"""The method protocol: what a method package fills in, and the train / eval / predict scripts built on it.

A method package ``<pkg>`` (hivg, simvg, ...) has a module ``<pkg>/method.py`` with these module-level names;
its ``train.py`` / ``eval.py`` / ``predict.py`` are then three-line scripts over `train`, `evaluate` and
`predict` below (``get_args_parser`` = `train_parser(method)` etc.).

Required
--------
``NAME``                                        display name, e.g. "HiVG"
``add_args(parser, mode)``                      the method's flags for ``mode`` in ("train", "eval", "predict"),
                                                incl. the `vgcore.cli` groups it uses.  Every mode needs
                                                ``--output_dir --device --seed --batch_size --eval_batch_size
                                                --num_workers --amp`` (`vgcore.cli` groups), "train" also
                                                ``--dist_backend --train_split --val_split``, "eval"
                                                ``--dist_backend --eval_sets --vis`` (nargs "+": split names)
                                                Optional: ``--compile`` (every mode), ``--grad_ckpt`` (train):
                                                `vgcore.cli.add_speed_args`, applied by `vgcore.speed`
``build(args, logger) -> (model, criterion)``   training: the model with its initial weights (pretrained
                                                parts per the flags; nothing when ``args.resume``) and the loss
``load(args) -> model``                         eval / predict: the model of the checkpoint the flags name
``records(args, split, train) -> [Record]``     the annotations of one split (`vgcore.data.build.load_split`)
``pipeline(args, model, train) -> (transform, tokenizer)``   the model's input transform and tokenizer
``make_postprocess(args, model, split) -> fn``  ``fn(outputs, batch) -> dict`` fed to the accumulators
``make_accumulators(args)``                     fresh metric accumulators (`vgcore.engine.evaluate` protocol)
``build_optimizer(args, model, iters_per_epoch) -> (optimizer, scheduler, ema or None)``
``loop_config(args) -> LoopConfig``             the epoch loop, each field from a named flag
``predictions(args, model, outputs, batch) -> [dict]``   per sample, original pixels: ``box_xyxy`` [4] (numpy), optional
                                                ``boxes_xyxy`` [K,4] (drawn instead of ``box_xyxy`` when
                                                present), optional ``mask_rle`` (compressed COCO RLE of the
                                                predicted mask, `vgcore.data.masks.encode_mask`; drawn
                                                translucent) and any other JSON-able numbers (``score`` ...)
``convert(argv) -> int``                        official weights -> ours (the ``<pkg>/convert.py`` command line)

Optional
--------
``prepare(args)``                               fill flags derived from others (recipe presets), in place;
                                                runs first in every mode
``before_fit(args, model, validate, logger) -> best or None``   training, after building: e.g. validate the
                                                previous stage's model (``validate()`` returns the metrics) to
                                                set the best so far
``format_metrics(args, split, metrics) -> str`` the evaluation report line(s); default: the JSON
``load_masks(args, train) -> False | True | "box"``   whether the loaders decode each record's mask (True:
                                                its segmentation; "box": the box-shaped mask) into
                                                ``Batch.masks`` on the input canvas; default False

`check(method)` lists what a module is missing.  Data flow of every mode: ``records`` -> ``pipeline`` ->
`vgcore.data.build.build_grounding_loader` -> ``model(batch)`` -> ``make_postprocess`` -> ``make_accumulators``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

import numpy as np
import torch

from . import dist
from .data.build import build_grounding_loader, single_batch
from .data.image import load_image
from .engine import Logger, autocast_context, build_grad_scaler, check_amp, evaluate as run_evaluation, float_outputs
from .optim import describe_param_groups
from .speed import apply_speed_flags
from .trainer import fit, prepare_output_dir, wrap_ddp
from .viz import draw_grounding, save_prediction_grid

__all__ = ["REQUIRED", "OPTIONAL", "check", "train_parser", "eval_parser", "predict_parser", "train", "evaluate",
           "predict", "build_loader", "save_visualisation", "ensure_writable"]

REQUIRED = ("NAME", "add_args", "build", "load", "records", "pipeline", "make_postprocess", "make_accumulators",
            "build_optimizer", "loop_config", "predictions", "convert")
OPTIONAL = ("prepare", "before_fit", "format_metrics", "load_masks")


def check(method: ModuleType) -> List[str]:
    """Names of `REQUIRED` that ``method`` lacks (empty when it fills the protocol)."""
    return [name for name in REQUIRED if not hasattr(method, name)]


def _require(method: ModuleType) -> None:
    missing = check(method)
    if missing:
        raise TypeError(f"{method.__name__} does not fill the method protocol: missing {missing}")


def _parser(method: ModuleType, mode: str, title: str, add_help: bool) -> argparse.ArgumentParser:
    _require(method)
    p = argparse.ArgumentParser(f"{method.NAME} {title}", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    method.add_args(p, mode)
    return p


def train_parser(method: ModuleType, add_help: bool = True) -> argparse.ArgumentParser:
    return _parser(method, "train", "training", add_help)


def eval_parser(method: ModuleType, add_help: bool = True) -> argparse.ArgumentParser:
    return _parser(method, "eval", "evaluation", add_help)


def predict_parser(method: ModuleType, add_help: bool = True) -> argparse.ArgumentParser:
    p = _parser(method, "predict", "prediction", add_help)
    g = p.add_argument_group("prediction")
    g.add_argument("--image", required=True, help="an image file")
    g.add_argument("--text", required=True, help="the referring expression")
    g.add_argument("--out", default="prediction.png", help="PNG with the predicted box drawn")
    return p


def _prepare(method: ModuleType, args: argparse.Namespace) -> None:
    if hasattr(method, "prepare"):
        method.prepare(args)


def build_loader(method: ModuleType, args: argparse.Namespace, model, split: str, train: bool):
    """The loader of one split: ``records`` + ``pipeline`` of the method (masks decoded when the method's
    ``load_masks`` asks); batch size ``--batch_size`` (train) or ``--eval_batch_size`` (default ``--batch_size``)."""
    transform, tokenizer = method.pipeline(args, model, train)
    batch_size = args.batch_size if train else (args.eval_batch_size or args.batch_size)
    masks = method.load_masks(args, train) if hasattr(method, "load_masks") else False
    return build_grounding_loader(method.records(args, split, train), transform, tokenizer, batch_size=batch_size,
                                  train=train, seed=args.seed, num_workers=args.num_workers, load_masks=masks)


def ensure_writable(directory) -> Path:
    """Create ``directory`` if needed and prove a file can be written there (`SystemExit` otherwise): run
    before any model work so that nothing computed is lost to an unwritable output location."""
    d = Path(directory or ".")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=str(d))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SystemExit(f"output location {d} is not writable ({e.strerror or e}); choose another one") from None
    return d


def _count(model: torch.nn.Module, trainable: bool = False) -> float:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable) / 1e6


def train(method: ModuleType, args: argparse.Namespace) -> Dict[str, Any]:
    """``train.py``'s main: build, then `vgcore.trainer.fit`; returns its summary."""
    _prepare(method, args)
    info = dist.init_distributed(backend=args.dist_backend, device=args.device)
    dist.seed_everything(args.seed, info.rank)
    device = info.device
    loop = dataclasses.replace(method.loop_config(args), overwrite=bool(getattr(args, "overwrite", False)),
                               allow_resume_changes=bool(getattr(args, "allow_resume_changes", False)))
    notes = prepare_output_dir(loop)
    logger = Logger(loop.output_dir, tensorboard=loop.tensorboard)
    for note in notes:
        logger.info(note)
    logger.info("args: " + json.dumps(vars(args), default=str))

    check_amp(loop.amp, device)
    model, criterion = method.build(args, logger)
    model.to(device)
    apply_speed_flags(model, args, logger, train=True)
    logger.info(f"{method.NAME}: {_count(model):.2f} M parameters, {_count(model, trainable=True):.2f} M trainable")
    train_loader = build_loader(method, args, model, args.train_split, train=True)
    dist.configure_cpu_threads(device, train_loader.num_workers)
    val_loader = build_loader(method, args, model, args.val_split, train=False)
    logger.info(f"train: {len(train_loader.dataset)} samples, {len(train_loader)} batches/epoch per process")
    optimizer, scheduler, ema = method.build_optimizer(args, model, max(len(train_loader) // loop.accum_steps, 1))
    logger.info("parameter groups (lr at the start of the schedule):\n" + describe_param_groups(optimizer.param_groups))
    scaler = build_grad_scaler(loop.amp, device)

    ddp = model
    if info.distributed:  # unused parameters are allowed: e.g. a branch a recipe switches off
        ddp = wrap_ddp(model, device, find_unused_parameters=True)
    postprocess = method.make_postprocess(args, model, args.val_split)

    def make_accumulators():
        return method.make_accumulators(args)

    initial_best = None
    if hasattr(method, "before_fit"):
        initial_best = method.before_fit(args, model, lambda: run_evaluation(
            ddp, val_loader, device, postprocess=postprocess, accumulators=make_accumulators(), amp=loop.amp,
            desc="val (before training)"), logger)
    summary = fit(loop, model=ddp, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
                  train_loader=train_loader, val_loader=val_loader, device=device, postprocess=postprocess,
                  make_accumulators=make_accumulators, ema=ema, scaler=scaler, model_config=model.cfg.to_dict(),
                  logger=logger, initial_best=initial_best, run_args=vars(args))
    logger.info(f"done: best val {loop.metric} {summary['best']}")
    logger.close()
    dist.destroy()
    return summary


def evaluate(method: ModuleType, args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    """``eval.py``'s main: ``{split: metrics}`` for every ``--eval_sets`` split; rank 0 prints them, then writes
    ``<output_dir>/eval_<dataset>_<split>.json`` (and ``vis_<dataset>_<split>.png`` with ``--vis N``).
    ``--output_dir`` is checked to be writable before the model is loaded."""
    _prepare(method, args)
    out = ensure_writable(args.output_dir)
    info = dist.init_distributed(backend=args.dist_backend, device=args.device)
    check_amp(args.amp, info.device)
    model = apply_speed_flags(method.load(args).to(info.device), args, train=False)
    results = {}
    for split in args.eval_sets:
        loader = build_loader(method, args, model, split, train=False)
        m = run_evaluation(model, loader, info.device, postprocess=method.make_postprocess(args, model, split),
                           accumulators=method.make_accumulators(args), amp=args.amp, desc=f"eval {split}")
        results[split] = m
        if dist.is_main_process():
            print(method.format_metrics(args, split, m) if hasattr(method, "format_metrics")
                  else f"{args.dataset} {split}: {json.dumps(m)}", flush=True)
            (out / f"eval_{args.dataset}_{split}.json").write_text(json.dumps(m, indent=2))
            if args.vis:
                save_visualisation(method, args, model, loader, args.vis, info.device,
                                   out / f"vis_{args.dataset}_{split}.png")
    dist.destroy()
    return results


def _drawn(pred: dict) -> np.ndarray:
    return pred["boxes_xyxy"] if "boxes_xyxy" in pred else np.asarray(pred["box_xyxy"])[None]


@torch.no_grad()
def save_visualisation(method: ModuleType, args, model, loader, n: int, device, path) -> None:
    """Grid PNG of the first ``n`` samples of ``loader``: prediction red, ground truth green, the expression."""
    dataset = loader.dataset
    batch = loader.collate_fn([dataset[i] for i in range(min(n, len(dataset)))]).to(device)
    model.eval()
    amp = getattr(args, "amp", "none")
    with autocast_context(amp, device):
        outputs = model(batch)
    preds = method.predictions(args, model, float_outputs(outputs), batch)
    save_prediction_grid(batch.records, [_drawn(p) for p in preds], path,
                         pred_masks=[p.get("mask_rle") for p in preds])


def _jsonable(key: str, v: Any) -> Any:
    """Boxes (``*xyxy``) rounded to 2 decimals, other numbers to 4; arrays become (nested) lists."""
    digits = 2 if key.endswith("xyxy") else 4

    def rnd(x):
        return [rnd(y) for y in x] if isinstance(x, list) else round(float(x), digits)
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return rnd(np.asarray(v).tolist())
    if isinstance(v, (float, np.floating)):
        return round(float(v), digits)
    return v


@torch.no_grad()
def predict(method: ModuleType, args: argparse.Namespace) -> Dict[str, Any]:
    """``predict.py``'s main: ``--image`` + ``--text`` -> the box in original pixels (printed as JSON first) and
    ``--out``, a PNG with it drawn (its folder is checked to be writable before the model is loaded)."""
    _prepare(method, args)
    ensure_writable(Path(args.out).parent)
    device = torch.device(args.device or "cpu")
    amp = getattr(args, "amp", "none")
    check_amp(amp, device)
    model = apply_speed_flags(method.load(args).to(device).eval(), args, train=False)
    transform, tokenizer = method.pipeline(args, model, False)
    batch = single_batch(args.image, args.text, transform, tokenizer, device)
    with autocast_context(amp, device):
        outputs = model(batch)
    pred = method.predictions(args, model, float_outputs(outputs), batch)[0]
    result = {"image": args.image, "text": args.text, **{k: _jsonable(k, v) for k, v in pred.items()}, "png": args.out}
    print(json.dumps(result), flush=True)
    draw_grounding(load_image(args.image), pred_boxes=_drawn(pred), text=args.text,
                   pred_mask=pred.get("mask_rle")).save(args.out)
    return result
