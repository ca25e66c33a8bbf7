"""One image and one expression in; the box in original pixels (and its object score) out, and a PNG with it drawn.

    python simvg/predict.py --load_from OUT/det_best.pth --beit3_spm CKPT/beit3.spm --image photo.jpg \
        --text "the man on the left" --out pred.png [--branch token]

``--branch decoder`` (default when the model has a trained DB) takes the DB's best query; ``--branch token``
runs the TB-only fast path (the image decoder is skipped).  With several queries (gRefCOCO models) every query
whose score is >= ``--score_thresh`` is returned too (``boxes``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from simvg.common import branch_predictions, build_tok
from simvg.eval import build_for_eval, get_args_parser as eval_parser
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.image import load_image
from vgcore.data.sample import Record
from vgcore.data.transforms import build_transforms
from vgcore.viz import draw_grounding


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SimVG prediction", parents=[eval_parser(add_help=False)], add_help=add_help,
                                conflict_handler="resolve")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--text", required=True, help="the referring expression")
    p.add_argument("--out", default="prediction.png", help="PNG with the predicted box drawn")
    p.add_argument("--branch", default="decoder", choices=("decoder", "token"))
    p.add_argument("--score_thresh", type=float, default=0.7, help="multi-query models: boxes kept")
    return p


@torch.no_grad()
def predict(model, tokenizer, image_path: str, text: str, branch: str = "decoder", device="cpu",
            score_thresh: float = 0.7) -> dict:
    """{'box_xyxy' [4] original pixels, 'score', 'boxes' [K,4] and 'scores' [K] of queries >= score_thresh}."""
    w, h = load_image(image_path).size
    rec = Record(image_path=image_path, expression=text, boxes=np.array([[0, 0, w, h]], np.float32), height=h, width=w)
    S = model.cfg.img_size
    ds = GroundingDataset([rec], build_transforms("simvg", train=False, imsize=S), tokenizer=tokenizer)
    batch = Collate(tokenizer)([ds[0]]).to(device)
    model.eval()
    p = branch_predictions(model(batch, branch=branch), batch, S)[branch]
    best = int(p["best"][0])
    sel = p["keep"][0] & (p["scores"][0] >= score_thresh)
    return {"box_xyxy": p["best_xyxy"][0].cpu().numpy(), "score": float(p["scores"][0, best]),
            "boxes": p["all_xyxy"][0][sel].cpu().numpy(), "scores": p["scores"][0][sel].cpu().numpy()}


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or "cpu")
    model = build_for_eval(args).to(device)
    if model.cfg.backbone == "tiny":
        args.backbone = "tiny"
    tokenizer = build_tok(args, model.cfg)
    r = predict(model, tokenizer, args.image, args.text, args.branch, device, args.score_thresh)
    boxes = r["boxes"] if model.cfg.num_queries > 1 else r["box_xyxy"][None]
    draw_grounding(load_image(args.image), pred_boxes=boxes, text=args.text).save(args.out)
    result = {"image": args.image, "text": args.text, "branch": args.branch,
              "box_xyxy": [round(float(v), 2) for v in r["box_xyxy"]], "score": round(r["score"], 4),
              "png": args.out}
    if model.cfg.num_queries > 1:
        result["boxes_xyxy"] = [[round(float(v), 2) for v in b] for b in r["boxes"]]
        result["scores"] = [round(float(s), 4) for s in r["scores"]]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
