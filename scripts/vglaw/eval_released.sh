#!/usr/bin/env bash
# Evaluates the official VG-LAW checkpoints the README names (law_fpt_vit_<dataset>_shareSD_mt.ckpt, MindSpore,
# multi-task ViT-B svd) on the official splits. The README's download links are "TODO": none of these files is
# public; the script is ready for when they are. vglaw/eval.py reads the .ckpt directly (converted on the fly,
# the official numerics switched on).
#
# Usage: scripts/vglaw/eval_released.sh [--dry-run] [DATASET ...]
#   DATASET in: refcoco refcoco+ refcocog refclef (default: all four)
# Expected files: $RELEASED_DIR/vglaw/law_fpt_vit_<dataset>_shareSD_mt.ckpt
# Env: NGPU (4), VGLAW_BS (eval batch per GPU, 8), RELEASED_DIR (./checkpoints/released), OUT_ROOT,
#      DATA_ROOT/REFER_ROOT, BERT_DIR (vocab.txt), DRY_RUN.
# Output: $OUT_ROOT/vglaw/released/<dataset>/eval_<dataset>_<split>.json
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_vglaw.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
vglaw_paths
NGPU="${NGPU:-$VGLAW_OFFICIAL_GPUS}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${VGLAW_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    vg_check_choice dataset "$ds" "${VGLAW_DATASETS[@]}"
    vg_section "released VG-LAW $ds"
    ckpt="$RELEASED_DIR/vglaw/law_fpt_vit_${ds}_shareSD_mt.ckpt"
    vg_need_file "$ckpt" "released checkpoint"
    vglaw_eval "$OUT_ROOT/vglaw/released/$ds" "$ckpt" "$ds"
done
