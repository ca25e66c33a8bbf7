#!/usr/bin/env bash
# Quickstart: the whole pipeline on the built-in synthetic dataset, on the CPU, in under 10 minutes.
#   1. make synthetic referring-expression data (every official format + tokenizer assets);
#   2. pretrain the tiny preset's CLIP towers on synthetic scenes and expressions of another seed
#      (hivg/pretrain_tiny.py): the image tower on dense per-patch kind/colour tags, the text tower on what each
#      expression says (kind, colour, size, type, direction, anchor).  The stand-in for the CLIP weights HiVG
#      starts from, which are not available offline;
#   3. train the tiny HiVG preset (same architecture as HiVG-B/16) over both towers, frozen as the official
#      stage 0 freezes CLIP (bridges, fusion encoder and heads learn);
#   4. evaluate on val: metrics JSON + a PNG of predictions (red) and ground truth (green);
#   5. compare with the trivial baselines (centre box, largest object, random object) and the noun-only one.
# Data: the generator's larger-shape preset (--object-scale 1.8 --max-objects 5): at the tiny preset's 128 px
# and 16 px patches the default shapes cover one or two patches.  Its val baselines are printed and written
# to quickstart_metrics.json (random object 38.3%, noun-only 69.5%); SCENE_FLAGS="" gives the default data.
# Recipe: the official architecture and loss terms, with a from-scratch schedule: batch 32, lr 1e-3 with a
# 50-step warm-up and per-step cosine, no fusion dropout, the contrastive term off (the bridges let the image
# CLS see its own text: a shortcut) and the two focal terms at weight 1 instead of 20 (they swamp the box
# terms in the shared weights of a random-init model); the tiny preset (width 64, 4 fusion layers) uses sine
# position tables.  Measured on 2 cores: see hivg/README.md, "Quickstart".
# Usage: bash scripts/quickstart.sh [--dry-run] [TRAIN_FLAGS...]
#   TRAIN_FLAGS go to hivg/train.py (e.g. --amp bf16, --compile, --grad_ckpt); EVAL_FLAGS (env) to hivg/eval.py.
#   env: OUT (default ./outputs/quickstart), EPOCHS (8), NUM_TRAIN (6000), PRETRAIN_STEPS (image tower, 3000),
#   TEXT_STEPS (text tower, 400; 0 leaves it at its random init), TRAIN_CLIP (none: both towers frozen, as
#   the official stage 0; text / vision / all train them too), SCENE_FLAGS, SEED (model init and data order of
#   pretraining and training; default 13, the official --seed)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
vg_init "$@"
OUT=${OUT:-./outputs/quickstart}
EPOCHS=${EPOCHS:-8}
NUM_TRAIN=${NUM_TRAIN:-6000}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
TEXT_STEPS=${TEXT_STEPS:-400}
SEED=${SEED:-13}
TRAIN_CLIP=${TRAIN_CLIP:-none}
SCENE_FLAGS=${SCENE_FLAGS---object-scale 1.8 --max-objects 5}
read -r -a SCENE <<< "$SCENE_FLAGS"  # generator options; pretrain_tiny.py takes the same ones
QS_DEVICE=${QS_DEVICE:-cpu}  # CPU by default (the machine-wide DEVICE of scripts/lib.sh is cuda)
# training runs as QS_NPROC processes (lib.sh's vg_launch: torch.distributed.launch --use_env, gloo on the CPU,
# one thread each; the global batch stays 32): on 2 cores an epoch takes ~34 s with both towers frozen (~53 s
# when the text tower trains, against ~60 s for one process with 2 threads).  QS_NPROC=1: plain $PYTHON.
QS_NPROC=${QS_NPROC:-2}
if [ "$QS_NPROC" -gt 1 ]; then
    NGPU=$QS_NPROC TRAIN=(vg_launch)
else
    TRAIN=(run "$PYTHON")
fi
BATCH=$((32 / QS_NPROC))  # per process, as --batch_size is per GPU in the official scripts
DATA=$OUT/data
MODEL_FLAGS=(--model tiny --dataset unc --imsize 128 --max_query_len 20 --normalize_before --enable_adaptive_weights)

run "$PYTHON" -m vgcore.synthetic --out "$DATA" --num-train "$NUM_TRAIN" --num-val 500 --num-test 250 --seed 0 \
    --formats transvg "${SCENE[@]+"${SCENE[@]}"}"
run "$PYTHON" hivg/pretrain_tiny.py "${MODEL_FLAGS[@]}" --steps "$PRETRAIN_STEPS" --text_steps "$TEXT_STEPS" --seed "$SEED" "${SCENE[@]+"${SCENE[@]}"}" --device "$QS_DEVICE" \
    --out "$OUT/tiny_clip.pth"
"${TRAIN[@]}" hivg/train.py "${MODEL_FLAGS[@]}" --clip_dir "$OUT/tiny_clip.pth" --train_clip "$TRAIN_CLIP" --seed "$SEED" \
    --split_root "$DATA/split/data" --image_root "$DATA/images" \
    --batch_size "$BATCH" --lr 1e-3 --epochs "$EPOCHS" --lr_scheduler cosine --lr_interval step --warmup_steps 50 \
    --vl_dropout 0 --use_rtcc_constrain_loss --use_mask_loss --align_focal_coef 1 --seg_focal_coef 1 \
    --device "$QS_DEVICE" --num_workers 0 --log_every 20 --output_dir "$OUT/hivg" --overwrite \
    "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
read -r -a EVAL_EXTRA <<< "${EVAL_FLAGS:-}"
run "$PYTHON" hivg/eval.py --eval_model "$OUT/hivg/best_checkpoint.pth" --eval_set val --dataset unc \
    --split_root "$DATA/split/data" --image_root "$DATA/images" --device "$QS_DEVICE" --num_workers 1 \
    --vis 16 --output_dir "$OUT/hivg" "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}"
run "$PYTHON" scripts/baselines.py --data "$DATA" --split val --metrics "$OUT/hivg/eval_unc_val.json" \
    --out "$OUT/quickstart_metrics.json"
