#!/usr/bin/env bash
# ViT-B two-stage distillation after pre-training (DB + token branch with DWBD):
# configs/mix/ViT-base/two-stage_distill_{mix,coco_all}/noema#finetune#<ds>.py, lr 3e-4, batch 32 on one GPU;
# mixed: 15 epochs, decay at 10, token 2.0 / distill 1.0; cocoall: 20 epochs, decay at 15, token 1.0 /
# distill 0.4. Initialised with --finetune_from the pre-training det_best.pth (README: "--load-from
# <pth/of/pretrain>"); DISTILL_FROM=<file> overrides (e.g. a fine-tuned checkpoint).
# Paper rows: SimVG-TB ViT-B with pre-training (numbers in the paper PDF only).
#
# Usage: scripts/simvg/train_distill_base.sh [--dry-run] [mixed|cocoall] [DATASET ...]
#   first argument: the pre-training source (default cocoall); DATASET in: refcoco refcocoplus refcocog
# Env: NGPU (1, as official), PRETRAIN_CKPT (default $OUT_ROOT/simvg/pretrain_<source>_base/det_best.pth),
#      OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT, BEIT3_DIR/BEIT3_CKPT_BASE/BEIT3_SPM, STAGES (distill eval),
#      SIMVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/simvg/distill_<source>_base/<dataset>/det_best.pth
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_simvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
simvg_paths
NGPU="${NGPU:-1}"

src=cocoall
if [[ $# -gt 0 ]] && vg_in_list "$1" mixed cocoall; then src="$1"; shift; fi
init="${PRETRAIN_CKPT:-$OUT_ROOT/simvg/pretrain_${src}_base/det_best.pth}"
init="${DISTILL_FROM:-$init}"
if simvg_want distill; then vg_need_file "$init" "pre-trained checkpoint"; fi

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=(refcoco refcocoplus refcocog)
for ds in "${datasets[@]}"; do
    simvg_after_pretrain distill beit3_base "$src" "$ds" "$OUT_ROOT/simvg/distill_${src}_base/$ds" "$init"
done
