#!/usr/bin/env bash
# Evaluates the RELEASED official HiVG checkpoints (README Google-Drive bundles) against HiVG paper
# Table 1, all four HiVG rows: "HiVG (CLIP-B)", "HiVG-L (CLIP-L)" (single-dataset fine-tuning, stage-3
# models) and "HiVG†", "HiVG-L†" (mixup pre-training, evaluated on every split without fine-tuning).
# Each official file is first converted to our layout (hivg/convert.py), then evaluated with the
# official batch sizes (60 / 32 / 64 per GPU) of eval_single_dataset_finetuning_{base,large}.sh and
# eval_mixup_grounding_pretraining_{base,large}.sh. The released weights were trained with the official
# bridge's cross-sample mixing, so this script passes --bridge_batch_mixing by default
# (HIVG_COMPAT=1); HIVG_COMPAT=0 evaluates them with the corrected per-sample bridge instead.
#
# Usage: scripts/hivg/eval_released.sh [--dry-run] [BUNDLE ...]
#   BUNDLE in: finetuning_base finetuning_large mixup_pretraining_base mixup_pretraining_large (default all)
# Expected layout (as unpacked from the README links):
#   $RELEASED_DIR/hivg/finetuning_{base,large}/{unc,unc+,gref_umd,referit,flickr}/best_checkpoint.pth
#   $RELEASED_DIR/hivg/mixup_pretraining_{base,large}/mixup/best_checkpoint.pth
# Env: NGPU (7), RELEASED_DIR (./checkpoints/released), OUT_ROOT, DATA_ROOT/HIVG_DATA_ROOT, SPLIT_ROOT,
#      CLIP_DIR, HIVG_COMPAT (default 1 here), DRY_RUN.
# Output: converted checkpoints and eval logs in $OUT_ROOT/hivg/released/<bundle>/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_hivg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
HIVG_COMPAT="${HIVG_COMPAT:-1}"
hivg_paths
NGPU="${NGPU:-7}"

all_bundles=(finetuning_base finetuning_large mixup_pretraining_base mixup_pretraining_large)
bundles=("$@")
[[ ${#bundles[@]} -gt 0 ]] || bundles=("${all_bundles[@]}")

for bundle in "${bundles[@]}"; do
    vg_check_choice bundle "$bundle" "${all_bundles[@]}"
    size="${bundle##*_}"                       # base | large
    # shellcheck disable=SC2207
    archv=($(hivg_arch "$size"))
    out="$OUT_ROOT/hivg/released/$bundle"
    if [[ "$bundle" == finetuning_* ]]; then
        bs=60; if [[ "$size" == large ]]; then bs=32; fi
        for ds in "${HIVG_DATASETS[@]}"; do
            vg_section "released $bundle / $ds"
            src="$RELEASED_DIR/hivg/$bundle/$ds/best_checkpoint.pth"
            dst="$out/$ds/converted.pth"
            vg_need_file "$src" "released checkpoint"
            run mkdir -p "$(dirname "$dst")"
            run "$PYTHON" -m hivg.convert --src "$src" --dst "$dst" --kind official --mixup no
            hivg_eval "$out/$ds" "$dst" "$ds" "$bs" "${archv[@]}" --enable_adaptive_weights --hi_lora_stage 3
        done
    else
        vg_section "released $bundle"
        src="$RELEASED_DIR/hivg/$bundle/mixup/best_checkpoint.pth"
        dst="$out/mixup/converted.pth"
        vg_need_file "$src" "released checkpoint"
        run mkdir -p "$(dirname "$dst")"
        run "$PYTHON" -m hivg.convert --src "$src" --dst "$dst" --kind official --mixup yes
        hivg_mixup_eval "$size" "$dst" "$out"
    fi
done
