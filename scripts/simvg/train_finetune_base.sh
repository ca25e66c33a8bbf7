#!/usr/bin/env bash
# ViT-B fine-tuning after pre-training (decoder branch only): configs/mix/ViT-base/finetune_{mix,coco_all}/
# noema#finetune#<ds>.py, lr 1e-4 (cocoall RefCOCO 2e-4), batch 32 on one GPU, 10 epochs, decay at 8,
# initialised with --finetune_from the pre-training det_best.pth (the README says --load-from, but the
# configs set finetune_from, which wins).
# Paper rows: SimVG-DB ViT-B with pre-training (secondary: RefCOCO 91.47/93.65/87.94, RefCOCO+
# 84.83/88.85/79.12, RefCOCOg 86.30/87.26).
#
# Usage: scripts/simvg/train_finetune_base.sh [--dry-run] [mixed|cocoall] [DATASET ...]
#   first argument: the pre-training source (default cocoall); DATASET in: refcoco refcocoplus refcocog
# Env: NGPU (1, as official), PRETRAIN_CKPT (default $OUT_ROOT/simvg/pretrain_<source>_base/det_best.pth),
#      OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_BASE/BEIT3_SPM, STAGES (finetune eval),
#      SIMVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/simvg/finetune_<source>_base/<dataset>/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_simvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
simvg_paths
NGPU="${NGPU:-1}"

src=cocoall
if [[ $# -gt 0 ]] && vg_in_list "$1" mixed cocoall; then src="$1"; shift; fi
init="${PRETRAIN_CKPT:-$OUT_ROOT/simvg/pretrain_${src}_base/det_best.pth}"
if simvg_want finetune; then vg_need_file "$init" "pre-trained checkpoint"; fi

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=(refcoco refcocoplus refcocog)
for ds in "${datasets[@]}"; do
    simvg_after_pretrain finetune beit3_base "$src" "$ds" "$OUT_ROOT/simvg/finetune_${src}_base/$ds" "$init"
done
