"""One image and one expression in: the box in original pixels (and its object score), the mask, and the
attention map over the image out; a PNG with box and mask drawn and a PNG of the attention map.

    python alvg/predict.py --load_from OUT/det_best.pth --beit3_spm CKPT/beit3.spm --image photo.jpg \
        --text "the man on the left" --out pred.png [--attn_out attn.png]

Printed JSON: ``box_xyxy``, ``score``, ``mask_area`` and ``mask_rle`` (COCO compressed RLE of the mask at the
image's resolution, probability > ``--mask_thresh``), with several queries (gRefCOCO models) also ``boxes_xyxy``
/ ``scores`` of the queries above ``--score_thresh``, and ``png`` / ``attn_png``.  The attention map is the
decoder's head-averaged cross-attention of the best query, summed over the decoder layers, sampled onto the
image and drawn as a heat map over it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python alvg/predict.py`: make the repository importable, not alvg/ itself
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from alvg import method
from alvg.data import masks_to_original
from vgcore import method as protocol
from vgcore.data.build import single_batch
from vgcore.data.image import load_image
from vgcore.data.masks import decode_mask
from vgcore.viz import draw_grounding


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return protocol.predict_parser(method, add_help)


def attention_over_image(outputs: dict, batch, best: torch.Tensor) -> torch.Tensor:
    """[B, Hm, Wm] attention of each sample's best query (summed over layers, max-normalised) in original pixels."""
    attn = outputs["attn_maps"].sum(0)                                    # [B,Q,h,w]
    a = attn[torch.arange(attn.shape[0]), best.to(attn.device)]            # [B,h,w]
    a = a / a.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    vals, valid = masks_to_original(a, batch)
    return (vals * valid).cpu()


def heat_overlay(image, heat: np.ndarray, alpha: float = 0.55):
    """A blue -> red heat map of ``heat`` ([H, W] in [0, 1]) blended over ``image``."""
    from PIL import Image
    img = np.asarray(image.convert("RGB")).astype(np.float32)
    h = np.clip(heat, 0, 1)[..., None]
    colour = np.concatenate([h, 1 - np.abs(2 * h - 1), 1 - h], -1) * 255.0
    return Image.fromarray((img * (1 - alpha) + colour * alpha).round().clip(0, 255).astype(np.uint8))


@torch.no_grad()
def main(args: argparse.Namespace) -> dict:
    method.prepare(args)
    out_png = Path(args.out)
    attn_png = Path(args.attn_out) if args.attn_out else out_png.with_name(out_png.stem + "_attn.png")
    protocol.ensure_writable(out_png.parent)
    protocol.ensure_writable(attn_png.parent)
    device = torch.device(args.device or "cpu")
    model = method.load(args).to(device).eval()
    transform, tokenizer = method.pipeline(args, model, False)
    batch = single_batch(args.image, args.text, transform, tokenizer, device)
    outputs = model(batch)
    pred = method.predictions(args, model, outputs, batch)[0]
    best = outputs["pred_logits"].float().softmax(-1)[..., 0].argmax(1)
    heat = attention_over_image(outputs, batch, best)[0]
    image = load_image(args.image)
    h, w = image.height, image.width
    heat = heat[:h, :w].numpy()
    mask = decode_mask(pred["mask_rle"], h, w).astype(bool) if "mask_rle" in pred else None
    boxes = pred.get("boxes_xyxy", np.asarray(pred["box_xyxy"])[None])
    draw_grounding(image, pred_boxes=boxes, text=args.text, pred_mask=mask).save(out_png)
    heat_overlay(image, heat).save(attn_png)
    result = {"image": args.image, "text": args.text,
              **{k: protocol._jsonable(k, v) for k, v in pred.items() if k != "mask_rle"},
              "mask_rle": pred.get("mask_rle"), "png": str(out_png), "attn_png": str(attn_png)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
