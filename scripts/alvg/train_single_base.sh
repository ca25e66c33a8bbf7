#!/usr/bin/env bash
# ALVG ViT-B/32 single-dataset recipe (configs/single/ViT-base/<dataset>/<dataset>.py): lr 5e-4, batch 32 on one
# GPU, 30 epochs (warm-up 3, x0.1 at 25), score-map loss 40 (RefCOCO+ 16), decoder-attention loss 1, mask loss on
# the datasets with masks (RefCOCO/+/g, gRefCOCO); gRefCOCO: 10 queries, 250 epochs (x0.1 at 225), attention
# losses off, validation every 2 epochs from epoch 50.
# Published numbers: none (the paper could not be found; alvg/README.md, "Results").
#
# Usage: scripts/alvg/train_single_base.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcocoplus refcocog refcocoggoogle referit flickr30k grefcoco (default: all seven)
# Env: NGPU (1, as official), OUT_ROOT, DATA_ROOT/ALVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_BASE/BEIT3_SPM,
#      STAGES (train eval), ALVG_COMPAT, RESUME, DRY_RUN.  Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/alvg/single_base/<dataset>/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_alvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
alvg_paths
NGPU="${NGPU:-1}"

all=("${ALVG_REC_DATASETS[@]}" grefcoco)
datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${all[@]}")
for ds in "${datasets[@]}"; do
    vg_check_choice dataset "$ds" "${all[@]}"
    alvg_single beit3_base "$ds" "$OUT_ROOT/alvg/single_base/$ds"
done
