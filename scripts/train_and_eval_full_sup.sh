#!/usr/bin/env bash
# Trains and evaluates the fully supervised single-dataset rows of every method, one after the other:
#   hivg   HiVG paper Table 1 rows "HiVG (CLIP-B)" and "HiVG-L (CLIP-L)", single-dataset fine-tuning
#   simvg  SimVG README row "SimVG (ViT-L/32, DB)" single-dataset, and the ViT-B one-stage recipe
#   vglaw  VG-LAW README rows (ViT-B multi-task REC + RES: RefCOCO, RefCOCO+, RefCOCOg-umd, RefClef)
#   resvg  ResVG README row (ResNet-50 + BERT-base) on RefCOCO/+/g, ReferItGame and Flickr30K
#   alvg   ALVG single-dataset recipes, ViT-B/32 (incl. gRefCOCO) and ViT-L/32 (no published numbers)
# (pre-training rows - HiVG mixup, SimVG pre-train/fine-tune/distill - have their own scripts under
# scripts/<method>/.)
#
# Usage: scripts/train_and_eval_full_sup.sh [--dry-run] [METHOD ...]    (default: every method below)
# Every environment variable of the per-method scripts applies (NGPU, OUT_ROOT, DATA_ROOT, ...); NGPU is
# left to each script's official default unless you export it.
#
# Adding a method = adding one line "<method> <script under scripts/> [args...]" to RUNS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"

RUNS=(
    "hivg  hivg/train_finetune_base.sh"
    "hivg  hivg/train_finetune_large.sh"
    "simvg simvg/train_single_large.sh"
    "simvg simvg/train_onestage_base.sh"
    "vglaw vglaw/train_multitask.sh"
    "resvg resvg/train_r50.sh"
    "alvg  alvg/train_single_base.sh"
    "alvg  alvg/train_single_large.sh"
)

known=()
for line in "${RUNS[@]}"; do
    read -r m _ <<<"$line"
    vg_in_list "$m" "${known[@]+"${known[@]}"}" || known+=("$m")
done
wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=("${known[@]}")
for m in "${wanted[@]}"; do vg_check_choice method "$m" "${known[@]}"; done

for line in "${RUNS[@]}"; do
    read -r -a parts <<<"$line"
    vg_in_list "${parts[0]}" "${wanted[@]}" || continue
    vg_section "${parts[0]}: scripts/${parts[1]} ${parts[*]:2}"
    # each script prints its own commands (and runs them unless DRY_RUN=1, exported by vg_init)
    bash "scripts/${parts[1]}" "${parts[@]:2}"
done
