#!/usr/bin/env bash
# Reproduces HiVG paper Table 1, row "HiVG-L (CLIP-L), single-dataset fine-tuning":
#   RefCOCO 88.14/91.09/83.71, RefCOCO+ 80.10/86.77/70.53, RefCOCOg-umd 80.78/80.25, ReferIt 76.23, Flickr 82.16.
# Per dataset: warm-1 (--warmup: no bridge, debiased CLIP-L) -> warm-2 (bridge on, --retrain warm-1) ->
# HiLoRA stages 1, 2, 3 -> eval of stage 3 on every split. Official recipe of
# train_single_dataset_finetuning_large_1_warm.sh + _large_2.sh (batch 32 per GPU, 7 GPUs officially).
# Deviation from the official warm-1 script: it passes the non-existent flag --use_csc_constrain_loss;
# we pass the intended --use_rtcc_constrain_loss.
#
# Usage: scripts/hivg/train_finetune_large.sh [--dry-run] [DATASET ...]
#   DATASET in: unc unc+ gref_umd referit flickr (default: all five)
# Env: NGPU (7), OUT_ROOT, DATA_ROOT/HIVG_DATA_ROOT, SPLIT_ROOT, CLIP_DIR, DEBIASED_CLIP_L, STAGES
#      (warm1 warm2 stage1 stage2 stage3 eval), EVAL_ALL_PHASES, HIVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/hivg/finetune_large/<dataset>/{warm1,warm2,stage1,stage2,stage3}/best_checkpoint.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_hivg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
hivg_paths
NGPU="${NGPU:-7}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${HIVG_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    hivg_finetune large "$ds" "$OUT_ROOT/hivg/finetune_large/$ds"
done
