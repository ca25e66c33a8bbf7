#!/usr/bin/env bash
# Reproduces the SimVG README model-zoo row "SimVG (ViT-L/32, DB), single-dataset":
#   RefCOCO 90.51/92.37/87.07, RefCOCO+ 84.88/88.50/78.66, RefCOCOg val-g 80.42, val-u/test-u 85.72/86.70,
#   Flickr30k 78.75, ReferIt 83.15 (decoder-branch accuracy, decoderDet@.5).
# Official configs configs/single/ViT-large/<ds>/<ds>_{twostage_1,twostage_2,onestage}.py (batch 4 on one
# GPU, lr 5e-4, BEiT-3 large, 640x640). Which config family produced the README's DB models is not stated;
# default SIMVG_RECIPE=twostage runs stage 1 (DB only; its DB accuracy is the row) and stage 2 (DWBD into the
# token branch); SIMVG_RECIPE=onestage runs the one-stage config instead (DB and TB in one run).
#
# Usage: scripts/simvg/train_single_large.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcocoplus refcocog refcocoggoogle referit flickr30k (default: all six)
# Env: NGPU (1, as official), SIMVG_RECIPE (twostage|onestage), OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT,
#      BEIT3_DIR/BEIT3_CKPT_LARGE/BEIT3_SPM, STAGES (stage1 stage2 eval | train eval), SIMVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/simvg/single_large/<dataset>/{stage1,stage2|onestage}/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_simvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
simvg_paths
NGPU="${NGPU:-1}"
SIMVG_RECIPE="${SIMVG_RECIPE:-twostage}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${SIMVG_REC_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    vg_check_choice dataset "$ds" "${SIMVG_REC_DATASETS[@]}"
    simvg_single "$SIMVG_RECIPE" beit3_large "$ds" "$OUT_ROOT/simvg/single_large/$ds"
done
