#!/usr/bin/env bash
# Reproduces HiVG paper Table 1, row "HiVG-L† (CLIP-L), dataset-mixed pre-training":
#   RefCOCO 91.37/93.64/88.03, RefCOCO+ 86.78/89.91/78.02, RefCOCOg-umd 88.61/88.60, ReferIt 78.16, Flickr 82.63.
# Mixup pre-training: warm-1 10 ep (--warmup, no bridge, debiased CLIP-L) -> warm-2 30 ep (--retrain) ->
# HiLoRA stages 1/2/3, 10 ep each, lr 1e-4 / 5e-5 / 2e-5, batch 32 per GPU; then evaluation of the
# stage-3 model on every split of the five benchmarks (train/eval_mixup_grounding_pretraining_large.sh).
# Note: the official large eval script passes no --hi_lora_stage; our checkpoints always carry the stage-3
# model, so we pass --hi_lora_stage 3.
#
# Usage: scripts/hivg/train_mixup_large.sh [--dry-run]
# Env: NGPU (7), OUT_ROOT, DATA_ROOT/HIVG_DATA_ROOT, SPLIT_ROOT, CLIP_DIR, DEBIASED_CLIP_L, STAGES
#      (warm1 warm2 stage1 stage2 stage3 eval), HIVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/hivg/mixup_large/{warm1,warm2,stage1,stage2,stage3}/, eval logs in .../eval/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_hivg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
hivg_paths
NGPU="${NGPU:-7}"

hivg_mixup large "$OUT_ROOT/hivg/mixup_large"
