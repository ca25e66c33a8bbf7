#!/usr/bin/env bash
# Quickstart: the whole pipeline on the built-in synthetic dataset, on the CPU, in a few minutes.
#   1. make synthetic referring-expression data (every official format + tokenizer assets);
#   2. train the tiny HiVG preset (same architecture as HiVG-B/16, small random-init CLIP);
#   3. evaluate on val: metrics JSON + a PNG of predictions (red) and ground truth (green);
#   4. compare with the trivial baselines (centre box, largest object, random object) and the noun-only one.
# Recipe: the official architecture and loss terms, with a from-scratch schedule: batch 32, lr 1e-3 with a
# 50-step warm-up and per-step cosine, no fusion dropout, the contrastive term off (the bridges let the image
# CLS see its own text: a shortcut) and the two focal terms at weight 1 instead of 20 (they swamp the box
# terms in the shared weights of a random-init model); the tiny preset (width 64, 4 fusion layers) uses sine
# position tables.
# Status: see hivg/README.md ("Learning diagnosis") for the measured figures and the gap that remains.
# Usage: bash scripts/quickstart.sh [--dry-run]     env: OUT (default ./outputs/quickstart), EPOCHS, NUM_TRAIN
set -euo pipefail
source "$(dirname "$0")/lib.sh"
vg_init "$@"
OUT=${OUT:-./outputs/quickstart}
EPOCHS=${EPOCHS:-4}
NUM_TRAIN=${NUM_TRAIN:-6000}
QS_DEVICE=${QS_DEVICE:-cpu}  # CPU by default (the machine-wide DEVICE of scripts/lib.sh is cuda)
DATA=$OUT/data
MODEL_FLAGS=(--model tiny --dataset unc --imsize 128 --max_query_len 20 --normalize_before --enable_adaptive_weights)

run python -m vgcore.data.synthetic --out "$DATA" --num-train "$NUM_TRAIN" --num-val 500 --num-test 250 --seed 0 \
    --formats transvg
run python hivg/train.py "${MODEL_FLAGS[@]}" --train_clip \
    --split_root "$DATA/split/data" --image_root "$DATA/images" \
    --batch_size 32 --lr 1e-3 --epochs "$EPOCHS" --lr_scheduler cosine --lr_interval step --warmup_steps 50 \
    --vl_dropout 0 --use_rtcc_constrain_loss --use_mask_loss --align_focal_coef 1 --seg_focal_coef 1 \
    --device "$QS_DEVICE" --num_workers 0 --log_every 20 --output_dir "$OUT/hivg"
run python hivg/eval.py --eval_model "$OUT/hivg/best_checkpoint.pth" --eval_set val --dataset unc \
    --split_root "$DATA/split/data" --image_root "$DATA/images" --device "$QS_DEVICE" --num_workers 1 \
    --vis 16 --output_dir "$OUT/hivg"
run python scripts/baselines.py --data "$DATA" --split val --metrics "$OUT/hivg/eval_unc_val.json" \
    --out "$OUT/quickstart_metrics.json"
