#!/usr/bin/env bash
# Evaluates official ALVG checkpoints (the README's Google Drive "weights and logs" folder; which datasets and
# backbones it holds is not documented).  Each checkpoint is converted to our layout (alvg/convert.py: never-run
# modules dropped and listed) and evaluated with the official numerics (--official_compat: every compat switch,
# plus the batch-averaged numbers the official code reports) at the config's batch size.
#
# Usage: scripts/alvg/eval_released.sh [--dry-run] [BACKBONE/DATASET ...]
#   default: every base/<dataset> and large/<dataset> pair; BACKBONE in base large
# Expected layout: $RELEASED_DIR/alvg/<backbone>/<dataset>/det_best.pth (a missing file is reported in a dry run)
# Env: NGPU (1), RELEASED_DIR (./checkpoints/released), OUT_ROOT, DATA_ROOT/ALVG_DATA_ROOT, BEIT3_DIR/BEIT3_SPM,
#      ALVG_COMPAT (default 1 here), DRY_RUN.
# Output: converted checkpoints and eval logs in $OUT_ROOT/alvg/released/<backbone>/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_alvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
ALVG_COMPAT="${ALVG_COMPAT:-1}"
alvg_paths
NGPU="${NGPU:-1}"

pairs=("$@")
if [[ ${#pairs[@]} -eq 0 ]]; then
    for ds in "${ALVG_REC_DATASETS[@]}" grefcoco; do pairs+=("base/$ds"); done
    for ds in "${ALVG_REC_DATASETS[@]}"; do pairs+=("large/$ds"); done
fi
for pair in "${pairs[@]}"; do
    size="${pair%%/*}"; ds="${pair#*/}"
    vg_check_choice backbone "$size" base large
    vg_check_choice dataset "$ds" "${ALVG_REC_DATASETS[@]}" grefcoco
    vg_section "released ALVG $size / $ds"
    src="$RELEASED_DIR/alvg/$size/$ds/det_best.pth"
    out="$OUT_ROOT/alvg/released/$size/$ds"
    vg_need_file "$src" "released checkpoint"
    run mkdir -p "$out"
    run "$PYTHON" -m alvg.convert --src "$src" --dst "$out/converted.pth"
    alvg_eval "$out" "$out/converted.pth" single "beit3_$size" "$ds"
done
