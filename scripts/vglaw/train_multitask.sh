#!/usr/bin/env bash
# VG-LAW ViT-B multi-task (REC + RES, law svd, 448 px): the official README's four rows, one dataset after the other.
#   refcoco   RefCOCO val    REC Prec@0.5 86.62, RES mIoU 75.62   (splitBy unc; eval val testA testB)
#   refcoco+  RefCOCO+ val   76.37 / 66.63                        (unc; val testA testB)
#   refcocog  RefCOCOg val   76.90 / 65.63                        (umd; val test)
#   refclef   RefClef test   77.22 / -                            (berkeley; test)
# Per dataset (scripts/vglaw/_vglaw.sh, vglaw_row): stage1 = the README's generic command from ViTDet + BERT
# (lr 1e-5 / 1e-5 / 1e-4), stage2 = the released scripts/train_<dataset>.sh, which continue the authors' own
# earlier runs (lr 1e-6 / 1e-6 / 1e-5; RefCOCO+ 1e-5 / 1e-5 / 1e-4), here from stage 1's best_checkpoint.pth;
# then evaluation of stage 2 on the official splits. Shared: --batch_sum 256 --law_type svd --img_size 448
# --translate --lr_scheduler step --max_epochs 20 --drop_epochs 10 --use_mask. The first stage of the authors'
# runs is not released: stage 1 is our reading of the README command, not a verified recipe.
#
# Usage: scripts/vglaw/train_multitask.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcoco+ refcocog refclef (default: all four)
# Env: NGPU (4, as official), VGLAW_BS (largest per-GPU batch, 8), OUT_ROOT, DATA_ROOT/REFER_ROOT, VITDET_CKPT,
#      BERT_DIR, STAGES (stage1 stage2 eval), VGLAW_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      of 256 (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/vglaw/<dataset>/{stage1,stage2}/best_checkpoint.pth, eval_<dataset>_<split>.json in stage2/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_vglaw.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
vglaw_paths
NGPU="${NGPU:-$VGLAW_OFFICIAL_GPUS}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${VGLAW_DATASETS[@]}")
for ds in "${datasets[@]}"; do vg_check_choice dataset "$ds" "${VGLAW_DATASETS[@]}"; done
for ds in "${datasets[@]}"; do
    vglaw_row "$ds" "$OUT_ROOT/vglaw/$ds"
done
