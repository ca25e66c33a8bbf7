#!/usr/bin/env bash
# Reproduces HiVG paper Table 1, row "HiVG† (CLIP-B), dataset-mixed pre-training":
#   RefCOCO 90.56/92.55/87.23, RefCOCO+ 83.08/89.21/76.68, RefCOCOg-umd 86.52/86.62, ReferIt 77.75, Flickr 82.08.
# Pre-training on the "mixup" set (train splits of RefCOCO/+/g-umd, ReferIt, Flickr30k):
# warm-up 60 ep (bs 64, lr 2.5e-4, debiased CLIP-B) -> HiLoRA stages 1/2/3, 20 ep each, bs 64,
# lr 1e-4 / 5e-5 / 2e-5; then the stage-3 model is evaluated, without fine-tuning, on every split of
# the five benchmarks (train_mixup_grounding_pretraining_base.sh + eval_mixup_grounding_pretraining_base.sh).
# As officially, HiLoRA stages 1, 2 and 3 each start from the previous phase's last-epoch checkpoint.pth
# (--hi_lora_retrain: heads and fusion) and from the CLIP towers, LoRA and bridges of its best_checkpoint.pth
# (--hi_lora_clip clip_lora_stage_with_bridge.pth, written by the evaluation with --save_hilora_clip).
#
# Usage: scripts/hivg/train_mixup_base.sh [--dry-run]
# Env: NGPU (7), OUT_ROOT, DATA_ROOT/HIVG_DATA_ROOT, SPLIT_ROOT, CLIP_DIR, DEBIASED_CLIP_B, STAGES
#      (warmup stage1 stage2 stage3 eval), HIVG_COMPAT, RESUME, DRY_RUN.
#      NNODES/NODE_RANK/MASTER_ADDR: several machines (torchrun). Any GPU count keeps the official global batch
#      (per-GPU batch x gradient accumulation, printed as "# batch: ..." before each training command).
# Output: $OUT_ROOT/hivg/mixup_base/{warmup,stage1,stage2,stage3}/, eval logs in .../eval/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_hivg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
hivg_paths
NGPU="${NGPU:-7}"

hivg_mixup base "$OUT_ROOT/hivg/mixup_base"
