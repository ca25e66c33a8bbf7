"""One image and one expression in; the box in original pixels out, and a PNG with it drawn.

    python hivg/predict.py --eval_model OUT/best_checkpoint.pth --image photo.jpg \
        --text "the man on the left" --out pred.png
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

from hivg.eval import build_for_eval, get_args_parser as eval_parser
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.image import load_image
from vgcore.data.sample import Record
from vgcore.data.transforms import build_transforms
from vgcore.text import build_tokenizer
from vgcore.viz import draw_grounding


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("HiVG prediction", parents=[eval_parser(add_help=False)], add_help=add_help,
                                conflict_handler="resolve")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--text", required=True, help="the referring expression")
    p.add_argument("--out", default="prediction.png", help="PNG with the predicted box drawn")
    return p


@torch.no_grad()
def predict(model, image_path: str, text: str, device="cpu") -> np.ndarray:
    """xyxy box in original pixels."""
    w, h = load_image(image_path).size
    rec = Record(image_path=image_path, expression=text, boxes=np.array([[0, 0, w, h]], np.float32), height=h, width=w)
    ds = GroundingDataset([rec], build_transforms("hivg", train=False, imsize=model.cfg.image_size))
    batch = Collate(build_tokenizer("clip", max_len=model.cfg.context_length))([ds[0]]).to(device)
    model.eval()
    out = model(batch)
    return batch.boxes_to_original(out["pred_boxes"])[0].cpu().numpy()


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or "cpu")
    model = build_for_eval(args).to(device)
    box = predict(model, args.image, args.text, device)
    draw_grounding(load_image(args.image), pred_boxes=box[None], text=args.text).save(args.out)
    result = {"image": args.image, "text": args.text, "box_xyxy": [round(float(v), 2) for v in box], "png": args.out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
