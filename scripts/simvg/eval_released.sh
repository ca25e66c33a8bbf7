#!/usr/bin/env bash
# Evaluates the RELEASED official SimVG ViT-L/32 checkpoints (README OneDrive "model & log" folders) against
# the SimVG README model-zoo rows:
#   single_large_db         "SimVG (ViT-L/32, DB)" single-dataset: refcoco, refcocoplus, refcocog, flickr30k,
#                           referit (no released RefCOCOg-google model) - compare decoderDet@.5
#   cocoall_distill_large_tb "SimVG (ViT-L/32, refcocoallpretrain, two-stage distillation, TB)": refcoco,
#                           refcocoplus, refcocog - compare tokenDet@.5
# Each official det_best.pth is converted to our layout (simvg/convert.py), then evaluated with the config's
# batch size (4 for ViT-L).
# The released models were trained with the official numerics, so --official_compat is on by default
# (SIMVG_COMPAT=1: text pooling at token positions 18/19, degenerate text position encoding, and the
# batch-averaged accuracy the official code reports); SIMVG_COMPAT=0 turns it off.
#
# Usage: scripts/simvg/eval_released.sh [--dry-run] [BUNDLE ...]   (default: both bundles)
# Expected layout: $RELEASED_DIR/simvg/<bundle>/<dataset>/det_best.pth
# Env: NGPU (1), RELEASED_DIR (./checkpoints/released), OUT_ROOT, DATA_ROOT/SIMVG_DATA_ROOT, BEIT3_DIR/BEIT3_SPM,
#      SIMVG_COMPAT (default 1 here), DRY_RUN.
# Output: converted checkpoints and eval logs in $OUT_ROOT/simvg/released/<bundle>/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_simvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
SIMVG_COMPAT="${SIMVG_COMPAT:-1}"
simvg_paths
NGPU="${NGPU:-1}"

all_bundles=(single_large_db cocoall_distill_large_tb)
bundles=("$@")
[[ ${#bundles[@]} -gt 0 ]] || bundles=("${all_bundles[@]}")
for bundle in "${bundles[@]}"; do
    vg_check_choice bundle "$bundle" "${all_bundles[@]}"
    if [[ "$bundle" == single_large_db ]]; then
        preset=twostage_1; datasets=(refcoco refcocoplus refcocog flickr30k referit)
    else
        preset=distill; datasets=(refcoco refcocoplus refcocog)
    fi
    for ds in "${datasets[@]}"; do
        vg_section "released SimVG $bundle / $ds"
        src="$RELEASED_DIR/simvg/$bundle/$ds/det_best.pth"
        dst="$OUT_ROOT/simvg/released/$bundle/$ds/converted.pth"
        vg_need_file "$src" "released checkpoint"
        run mkdir -p "$(dirname "$dst")"
        run "$PYTHON" -m simvg.convert --src "$src" --dst "$dst"
        simvg_eval "$OUT_ROOT/simvg/released/$bundle/$ds" "$dst" "$preset" beit3_large "$ds"
    done
done
