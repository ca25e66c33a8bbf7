#!/usr/bin/env bash
# ALVG ViT-L/32 single-dataset recipe (configs/single/ViT-large/<dataset>/<dataset>.py): lr 5e-4, 4 per GPU on
# 8 GPUs (global 32; the GPU count is not stated officially), 30 epochs (warm-up 3, x0.1 at 21 and 27; Flickr30k
# at 25), score-map loss 32, decoder-attention loss 1, mask loss on RefCOCO/+/g.
# Published numbers: none (the paper could not be found; alvg/README.md, "Results").
#
# Usage: scripts/alvg/train_single_large.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcocoplus refcocog refcocoggoogle referit flickr30k (default: all six)
# Env: NGPU (8), OUT_ROOT, DATA_ROOT/ALVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_LARGE/BEIT3_SPM, STAGES (train eval),
#      ALVG_COMPAT, RESUME, DRY_RUN.  Any GPU count keeps the global batch 32.
# Output: $OUT_ROOT/alvg/single_large/<dataset>/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_alvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
alvg_paths
NGPU="${NGPU:-8}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${ALVG_REC_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    vg_check_choice dataset "$ds" "${ALVG_REC_DATASETS[@]}"
    alvg_single beit3_large "$ds" "$OUT_ROOT/alvg/single_large/$ds"
done
