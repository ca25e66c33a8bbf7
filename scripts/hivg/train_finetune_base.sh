#!/usr/bin/env bash
# Reproduces HiVG paper Table 1, row "HiVG (CLIP-B), single-dataset fine-tuning":
#   RefCOCO 87.32/89.86/83.27, RefCOCO+ 78.06/84.81/68.11, RefCOCOg-umd 78.29/78.79, ReferIt 75.22, Flickr 82.11.
# Per dataset: warm-up (HiLoRA stage 0, debiased CLIP-B) -> HiLoRA stages 1, 2, 3 -> eval of stage 3 on
# every split. Official recipe of train_and_eval_script/train_single_dataset_finetuning_base.sh
# (batch sizes are per GPU; the official runs used 7 GPUs, hence NGPU=7 by default).
#
# Usage: scripts/hivg/train_finetune_base.sh [--dry-run] [DATASET ...]
#   DATASET in: unc unc+ gref_umd referit flickr (default: all five)
# Env: NGPU (7), OUT_ROOT, DATA_ROOT/HIVG_DATA_ROOT, SPLIT_ROOT, CLIP_DIR, DEBIASED_CLIP_B, STAGES,
#      EVAL_ALL_PHASES, HIVG_COMPAT, RESUME, DRY_RUN (see scripts/lib.sh and scripts/hivg/_hivg.sh).
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/hivg/finetune_base/<dataset>/{warmup,stage1,stage2,stage3}/best_checkpoint.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_hivg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
hivg_paths
NGPU="${NGPU:-7}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${HIVG_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    hivg_finetune base "$ds" "$OUT_ROOT/hivg/finetune_base/$ds"
done
