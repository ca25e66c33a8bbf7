#!/usr/bin/env bash
# Evaluates official ResVG-R50 checkpoints (files written by the official train.py, e.g. ResVG_R50_unc.pth of
# the README's test command; no trained ResVG checkpoint is linked from the README, so bring your own) on the
# splits of the README row, as the README's `test.py --batch_size_test 32 --test_split <split>`:
# each file is converted to our layout (python -m resvg.convert; the network config comes from the file's own
# args), then evaluated with resvg/eval.py (strict IoU > 0.5, every sample counted once).
#
# Usage: scripts/resvg/eval_official.sh [--dry-run] [DATASET ...]   (default: all six)
# Expected layout: $RELEASED_DIR/resvg/ResVG_R50_<dataset>.pth
# Env: NGPU (4), RELEASED_DIR (./checkpoints/released), OUT_ROOT, DATA_ROOT/RESVG_SPLIT_ROOT, RESVG_PRIOR_ROOT,
#      LN_DATA, BERT_DIR (its vocab.txt), DRY_RUN.
# Output: converted checkpoints and eval_<dataset>_<split>.json in $OUT_ROOT/resvg/official/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_resvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
resvg_paths
NGPU="${NGPU:-$RESVG_OFFICIAL_GPUS}"

datasets=("$@")
[[ ${#datasets[@]} -gt 0 ]] || datasets=("${RESVG_DATASETS[@]}")
for ds in "${datasets[@]}"; do
    vg_check_choice dataset "$ds" "${RESVG_DATASETS[@]}"
    vg_section "official ResVG-R50 $ds"
    src="$RELEASED_DIR/resvg/ResVG_R50_$ds.pth"
    out="$OUT_ROOT/resvg/official/$ds"
    vg_need_file "$src" "official ResVG checkpoint"
    run mkdir -p "$out"
    run "$PYTHON" -m resvg.convert --src "$src" --dst "$out/converted.pth" --kind resvg
    resvg_eval "$out" "$out/converted.pth" "$ds"
done
