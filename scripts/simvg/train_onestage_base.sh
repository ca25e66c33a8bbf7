#!/usr/bin/env bash
# ViT-B one-stage distillation recipe (configs/single/ViT-base/<ds>/<ds>_onestage.py): DB + TB trained
# together with dynamic weight-balance distillation (token 2.0, distill 1.0), lr 5e-4, batch 32 on one GPU,
# 30 epochs (warm-up 3, decay at 25); gRefCOCO: 10 queries, 200 epochs (decay at 180), no LSJ.
# Paper rows: SimVG ViT-B single-dataset (SimVG-DB / SimVG-TB rows of the paper's tables; the numbers are not
# in the material we could read - copy them from the PDF) and the gRefCOCO GREC row
# (val 62.1/54.7, testA 64.6/57.2, testB 54.8/57.2 Pr@(F1=1)/N-acc, secondary source).
#
# Usage: scripts/simvg/train_onestage_base.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcocoplus refcocog refcocoggoogle referit flickr30k grefcoco (default: all seven)
# Env: NGPU (1, as official), OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_BASE/BEIT3_SPM,
#      STAGES (train eval), SIMVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/simvg/single_base/<dataset>/onestage/det_best.pth
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
    simvg_single onestage beit3_base "$ds" "$OUT_ROOT/simvg/single_base/$ds"
done
