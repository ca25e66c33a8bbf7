"""Evaluate a HiVG checkpoint on one split: Acc@0.5 over the whole split (each sample once, no sampler
padding), mean IoU, and the accuracy by expression length (1-5 / 6-7 / 8-10 / 11+ words).

    python hivg/eval.py --dataset unc --eval_set testA --eval_model OUT/best_checkpoint.pth \
        --normalize_before --enable_adaptive_weights --hi_lora_stage 3 --batch_size 60 --output_dir OUT
    python -m torch.distributed.launch --nproc_per_node=7 --use_env hivg/eval.py ...

``--eval_model`` takes our checkpoints (``best_checkpoint.pth``, which carries the model config, so the model
flags may be omitted) or an official HiVG checkpoint (converted on the fly; pass the official model flags and
``--bridge_batch_mixing`` to reproduce the released numbers).  Writes ``<output_dir>/eval_<dataset>_<set>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hivg import convert
from hivg.common import add_model_args, build_data, make_accumulators, make_postprocess, \
    model_config_from_args
from hivg.model import build_model
from vgcore import cli, dist
from vgcore.checkpoint import load_state_dict_strict
from vgcore.data.image import load_image
from vgcore.engine import evaluate
from vgcore.viz import draw_grounding, save_grid
from vgcore.trainer import load_model_file


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("HiVG evaluation", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_model", default="", help="checkpoint to evaluate (ours or official)")
    g.add_argument("--eval_set", default="test", help="val | testA | testB | test")
    g.add_argument("--use_mask_loss", action="store_true", help="accepted for compatibility (official: mask-IoU log)")
    g.add_argument("--save_hilora_clip", action="store_true", help="accepted for compatibility (not needed)")
    g.add_argument("--vis", type=int, default=0, help="also draw the first N predictions (red) and ground truths "
                   "(green) into <output_dir>/vis_<dataset>_<set>.png")
    g.add_argument("--merge_lora", action="store_true", help="fold LoRA into the base weights before evaluating")
    g.add_argument("--retrain", default="", help=argparse.SUPPRESS)
    g.add_argument("--hi_lora_retrain", default="", help=argparse.SUPPRESS)
    g.add_argument("--hi_lora_clip", default="", help=argparse.SUPPRESS)
    cli.add_dist_args(p)
    cli.add_logging_args(p, output_dir="./outputs", seed=13)
    p.set_defaults(batch_size=32, num_workers=2)
    return p


def build_for_eval(args):
    """Model from --eval_model (its stored config when present, else the flags), strictly loaded."""
    if not args.eval_model:
        raise SystemExit("hivg/eval.py: --eval_model is required")
    obj = load_model_file(args.eval_model, trust_pickle=args.trust_pickle)
    cfg = obj.get("config")
    if isinstance(cfg, dict) and "backbone" in cfg:
        cfg = dict(cfg, compat_batch_mixing=bool(args.bridge_batch_mixing))
        model = build_model(cfg)
        load_state_dict_strict(model, obj["model"], what=args.eval_model)
    else:  # official checkpoint (or a bare state dict): model from the official flags
        model = build_model(model_config_from_args(args))
        sd = obj["model"]
        if any(k.startswith("clip.") for k in sd):
            sd, _ = convert.convert_official(obj["raw"], mixup=args.mixup_pretrain)
        load_state_dict_strict(model, sd, what=args.eval_model)
    model.compat_batch_mixing = bool(args.bridge_batch_mixing)
    if args.merge_lora:
        model.merge_lora()
    return model


def main(args: argparse.Namespace) -> dict:
    info = dist.init_distributed(backend=args.dist_backend, device=args.device)
    model = build_for_eval(args).to(info.device)
    args.imsize, args.max_query_len = model.cfg.image_size, model.cfg.context_length
    _, loader, _ = build_data(args, args.eval_set, train=False)
    metrics = evaluate(model, loader, info.device, postprocess=make_postprocess(), accumulators=make_accumulators(),
                       amp=args.amp if hasattr(args, "amp") else "none", desc=f"eval {args.eval_set}")
    if dist.is_main_process():
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"eval_{args.dataset}_{args.eval_set}.json").write_text(json.dumps(metrics, indent=2))
        print(f"{args.dataset} {args.eval_set}: Acc@0.5 {100 * metrics['acc@0.5']:.2f} "
              f"(n={int(metrics['n'])}, mIoU {metrics['miou']:.4f}; alignment map on target "
              f"{100 * metrics['align_pointing']:.1f}%)")
        for k in sorted(metrics):
            if k.startswith("acc@0.5/"):
                print(f"  {k[8:]:>8}: {100 * metrics[k]:.2f} (n={int(metrics['n/' + k[8:]])})")
        if args.vis:
            save_visualisation(model, loader.dataset, loader.collate_fn, args.vis, info.device,
                               out / f"vis_{args.dataset}_{args.eval_set}.png")
    dist.destroy()
    return metrics


@torch.no_grad()
def save_visualisation(model, dataset, collate, n: int, device, path) -> None:
    """Grid PNG of the first ``n`` samples: prediction red, ground truth green, the expression below."""
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = collate(samples).to(device)
    model.eval()
    pred = batch.boxes_to_original(model(batch)["pred_boxes"]).cpu().numpy()
    tiles = [draw_grounding(load_image(r.image_path, r), pred_boxes=pred[i:i + 1], gt_boxes=r.boxes, text=r.expression)
             for i, r in enumerate(batch.records)]
    save_grid(tiles, path, ncol=4)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
