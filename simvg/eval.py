"""Evaluate a SimVG checkpoint: DB and TB Acc@0.5 (gRefCOCO: Pr@(F1=1, IoU>=0.5), N-acc, T-acc at score 0.7)
at dataset level on each of ``--eval_sets``.

    python -m torch.distributed.launch --nproc_per_node=1 --use_env simvg/eval.py --preset onestage \
        --dataset refcoco --backbone beit3_base --beit3_spm CKPT/beit3.spm --data_root data/seqtr \
        --load_from OUT/det_best.pth --eval_sets val testA testB --batch_size 32 --output_dir OUT

``--load_from`` takes our checkpoints (their stored config builds the model; ``--preset``/architecture flags
are then ignored), `simvg.convert` payloads, or an official ``det_best.pth`` (converted on the fly; both
turn the compat switches on).  ``--branch token`` runs the TB-only fast path (the image decoder is skipped).
``--batch_mean_metric`` (on with ``--official_compat``) also prints the official batch-averaged numbers.
Writes ``<output_dir>/eval_<dataset>_<split>.json`` per split; ``--vis N`` draws the first N predictions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from simvg.common import (GREC_MAIN_KEY, add_arch_args, add_selection_args, branch_predictions, build_data,
                          build_tok, compat_of, is_multi_source, make_accumulators_factory, make_postprocess,
                          model_config_from_args, read_weights, resolve_preset)
from simvg.model import SimVG, build_model
from simvg import convert
from vgcore import dist
from vgcore.data.image import load_image
from vgcore.engine import evaluate
from vgcore.viz import draw_grounding, save_grid


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SimVG evaluation", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_args(p)
    add_arch_args(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--load_from", default="", help="checkpoint to evaluate (ours, converted or official)")
    g.add_argument("--eval_sets", nargs="+", default=["val"], help="splits, e.g. val testA testB")
    g.add_argument("--use_ema", action="store_true",
                   help="EMA weights: 'ema_state_dict' of an official file; our det_best.pth of an EMA run "
                        "already holds the EMA weights")
    g.add_argument("--batch_mean_metric", action="store_true",
                   help="also report the official mean of per-batch accuracies (depends on batch size)")
    g.add_argument("--branch", default="both", choices=("both", "decoder", "token"),
                   help="branches to run; 'token' = TB-only fast path")
    g.add_argument("--vis", type=int, default=0, help="draw the first N predictions (red DB, blue TB) and GT "
                   "(green) into <output_dir>/vis_<dataset>_<split>.png")
    g.add_argument("--lsj", default=None, help=argparse.SUPPRESS)
    g.add_argument("--tensorboard", type=int, default=0, help=argparse.SUPPRESS)
    return p


def build_for_eval(args, logger=None) -> SimVG:
    """Model from --load_from (its stored config when present, else the flags), strictly loaded, compat
    switches = stored config OR flags."""
    if not args.load_from:
        raise SystemExit("simvg/eval.py: --load_from is required")
    sd, cfg, kind = read_weights(args.load_from, use_ema=args.use_ema, trust_pickle=args.trust_pickle)
    if not cfg:
        cfg = model_config_from_args(args)
    cfg = {k: v for k, v in cfg.items() if k not in ("preset", "model_preset")} if "backbone" in cfg else cfg
    model = build_model(cfg)
    convert.load_into(model, convert.adapt_img_size(sd, model.cfg))
    flags = {"text_maxpool_int64_mask": args.text_pool_compat or args.official_compat,
             "text_pos_embed_1d_degenerate": args.text_pos_compat or args.official_compat}
    model.set_compat(**{k: bool(v) or bool(getattr(model.cfg, k)) for k, v in flags.items()})
    if args.use_ema and kind == "ours":
        print(f"note: {args.load_from} is one of our files; an EMA run's det_best.pth already holds the EMA weights")
    return model


def main(args: argparse.Namespace) -> dict:
    resolve_preset(args)
    if args.official_compat:
        args.batch_mean_metric = True
    info = dist.init_distributed(backend=args.dist_backend, device=args.device)
    model = build_for_eval(args).to(info.device)
    model.cfg.default_branch = args.branch
    if model.cfg.backbone == "tiny":
        args.backbone = "tiny"
    tokenizer = build_tok(args, model.cfg)
    img_size = model.cfg.img_size
    grec = args.dataset == "grefcoco"
    out = Path(args.output_dir)
    if dist.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        print(f"SimVG {model.cfg.backbone} {img_size}px, {model.cfg.num_queries} queries, branch {args.branch}, "
              f"compat {compat_of(model)}")
    results = {}
    for split in args.eval_sets:
        _, loader = build_data(args, split, False, tokenizer, img_size)
        m = evaluate(model, loader, info.device, postprocess=make_postprocess(img_size, is_multi_source(args.dataset, split)),
                     accumulators=make_accumulators_factory(grec, args.batch_mean_metric)(), amp=args.amp,
                     desc=f"eval {split}")
        results[split] = m
        if dist.is_main_process():
            (out / f"eval_{args.dataset}_{split}.json").write_text(json.dumps(m, indent=2))
            print(format_metrics(args.dataset, split, m, grec))
            if args.vis:
                save_visualisation(model, loader.dataset, loader.collate_fn, args.vis, info.device, img_size,
                                   out / f"vis_{args.dataset}_{split}.png")
    dist.destroy()
    return results


def format_metrics(dataset: str, split: str, m: dict, grec: bool) -> str:
    lines = [f"{dataset} {split} (n={int(m.get('n', 0))}):"]
    for b, official in (("decoder", "decoderDet@.5"), ("token", "tokenDet@.5")):
        if grec and f"{b}/{GREC_MAIN_KEY}" in m:
            s = (f"  {b:>7}: Pr@(F1=1,IoU>=0.5) {100 * m[f'{b}/{GREC_MAIN_KEY}']:.2f}  N-acc "
                 f"{100 * m[f'{b}/n_acc']:.2f}  T-acc {100 * m[f'{b}/t_acc']:.2f}")
            if f"{b}/batch_mean/{GREC_MAIN_KEY}" in m:
                s += (f"  | batch-averaged (official): F1score {100 * m[f'{b}/batch_mean/{GREC_MAIN_KEY}']:.2f}"
                      f"  N-acc {100 * m[f'{b}/batch_mean/n_acc']:.2f}")
            lines.append(s)
        elif f"{b}/acc@0.5" in m:
            s = f"  {b:>7} ({official}): Acc@0.5 {100 * m[f'{b}/acc@0.5']:.2f}  mIoU {m[f'{b}/miou']:.4f}"
            if f"{b}/batch_mean/acc@0.5" in m:
                s += f"  | batch-mean (official) {100 * m[f'{b}/batch_mean/acc@0.5']:.2f}"
            lines.append(s)
    lines.append(f"  score (selection) {100 * m['score']:.2f}")
    return "\n".join(lines)


@torch.no_grad()
def save_visualisation(model, dataset, collate, n: int, device, img_size: int, path) -> None:
    """Grid PNG of the first ``n`` samples: DB prediction red (TB only: its box), ground truth green."""
    samples = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = collate(samples).to(device)
    model.eval()
    preds = branch_predictions(model(batch), batch, img_size)
    name = "decoder" if "decoder" in preds else "token"
    p = preds[name]
    tiles = []
    for i, r in enumerate(batch.records):
        if p["all_xyxy"].shape[1] > 1:  # GREC: every kept query above the threshold
            sel = p["keep"][i] & (p["scores"][i] >= 0.7)
            boxes = p["all_xyxy"][i][sel].cpu().numpy()
        else:
            boxes = p["best_xyxy"][i:i + 1].cpu().numpy()
        tiles.append(draw_grounding(load_image(r.image_path, r), pred_boxes=boxes, gt_boxes=r.boxes, text=r.expression))
    save_grid(tiles, path, ncol=4)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
