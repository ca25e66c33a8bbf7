#!/usr/bin/env bash
# Reproduces the ResVG README row (ResNet-50 + BERT-base, Acc@0.5 %, IoU > 0.5):
#   RefCOCO 85.51/88.76/79.93, RefCOCO+ 73.95/79.53/64.88, RefCOCOg val-g 73.13, val-u/test-u 75.77/74.53,
#   ReferItGame test 72.35, Flickr30K test 79.52.
# Per dataset (configs/ResVG_R50_<dataset>.py, all with the same recipe): train on new_train from TransVG's
# DETR-R50 file for that dataset and bert-base-uncased, validating on val every epoch (official --test_split val),
# then evaluate on the splits the README reports (unc/unc+: val testA testB; gref: val; gref_umd: val test;
# referit, flickr: test). Official: 4 GPUs x batch 16, 90 epochs, StepLR at 60, four encoders frozen for 10.
#
# Usage: scripts/resvg/train_r50.sh [--dry-run] [DATASET ...]
#   DATASET in: unc unc+ gref gref_umd referit flickr (default: all six)
# Env: NGPU (4, as official), OUT_ROOT, DATA_ROOT/RESVG_SPLIT_ROOT, RESVG_PRIOR_ROOT, LN_DATA, DETR_DIR, BERT_DIR,
#      RESVG_TRAIN_SPLIT (new_train), RESVG_EXTRA_SPLITS, EVAL_CKPT, STAGES (train eval), RESUME, DRY_RUN
#      (see scripts/lib.sh and scripts/resvg/_resvg.sh).
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/resvg/r50/<dataset>/{checkpoint.pth,best_checkpoint.pth,log.txt,eval_<dataset>_<split>.json}
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_resvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
resvg_paths
NGPU="${NGPU:-$RESVG_OFFICIAL_GPUS}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${RESVG_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    resvg_row "$ds" "$OUT_ROOT/resvg/r50/$ds"
done
