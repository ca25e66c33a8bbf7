#!/usr/bin/env bash
# ViT-B pre-training recipes (8 GPUs x batch 32, lr 5e-4, 30 epochs, decay at 21 and 27, DB only, no LSJ):
#   mixed   configs/mix/ViT-base/pretrian-mixed.py  (Flickr30k + ReferIt + RefCOCO/+/g + VG, 174K images, 640)
#   cocoall configs/mix/ViT-base/pretrain-cocoall.py (RefCOCO/+/g without the google split, 28K images, 512)
# The pre-trained model is the starting point of train_finetune_base.sh / train_distill_base.sh (the paper's
# "pre-trained" ViT-B rows; secondary source: RefCOCO 91.47/93.65/87.94, RefCOCO+ 84.83/88.85/79.12,
# RefCOCOg 86.30/87.26 for SimVG-DB ViT-B with RefCOCO/+/g pre-training).
# Evaluates the pre-trained model on RefCOCO, RefCOCO+ and RefCOCOg splits.
#
# Usage: scripts/simvg/train_pretrain_base.sh [--dry-run] [mixed|cocoall ...]   (default: cocoall)
# Env: NGPU (8, as official), OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_BASE/BEIT3_SPM,
#      STAGES (pretrain eval), SIMVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/simvg/pretrain_<source>_base/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_simvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
simvg_paths
NGPU="${NGPU:-8}"

sources=("$@")
[[ ${#sources[@]} -gt 0 ]] || sources=(cocoall)
for src in "${sources[@]}"; do
    vg_check_choice "pre-training set" "$src" mixed cocoall
    simvg_pretrain beit3_base "$src" "$OUT_ROOT/simvg/pretrain_${src}_base"
done
