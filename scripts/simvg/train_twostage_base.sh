#!/usr/bin/env bash
# ViT-B two-stage distillation recipe: stage 1 configs/single/ViT-base/<ds>/<ds>_twostage_1.py (DB only,
# lr 5e-4, 30 epochs; batch 16 + EMA for refcoco/+/g/g-google, batch 32 without EMA for referit/flickr30k),
# then stage 2 <ds>_twostage_2.py (--load_from the stage-1 det_best.pth; DB + DWBD token 2.0 / distill 1.0,
# lr 3e-4, 20 epochs, decay at 15); gRefCOCO: 200 + 100 epochs, 10 queries, no LSJ.
# Paper rows: SimVG ViT-B single-dataset, two-stage (numbers only in the paper PDF).
# Note: stage 2 loads the stage-1 raw weights, not the EMA weights, as the official code does.
#
# Usage: scripts/simvg/train_twostage_base.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcocoplus refcocog refcocoggoogle referit flickr30k grefcoco (default: all seven)
# Env: NGPU (1), OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_BASE/BEIT3_SPM,
#      STAGES (stage1 stage2 eval), SIMVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/simvg/single_base/<dataset>/{stage1,stage2}/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_simvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
simvg_paths
NGPU="${NGPU:-1}"

all=("${SIMVG_REC_DATASETS[@]}" grefcoco)
datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${all[@]}")
for ds in "${datasets[@]}"; do
    vg_check_choice dataset "$ds" "${all[@]}"
    simvg_single twostage beit3_base "$ds" "$OUT_ROOT/simvg/single_base/$ds"
done
