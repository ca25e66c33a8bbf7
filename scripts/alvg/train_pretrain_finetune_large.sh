#!/usr/bin/env bash
# ALVG ViT-L/32 pre-training and fine-tuning (configs/mix/ViT-large/):
#   pretrain_mixed     pretrian-mixed.py: COCO + Flickr30k + VG + SAIAPR-TC12 (box-only: box attention targets),
#                      4 per GPU on 8 GPUs, 30 epochs (x0.1 at 21 and 27), score-map loss 32
#   pretrain_cocoall   pretrain-cocoall.py: RefCOCO/+/g train images with masks, 8 per GPU on 8 GPUs
#   finetune           finetune_coco_all/noema#finetune#<dataset>.py: from the RefCOCO-all pre-training
#                      (--load_from its det_best.pth), lr 2e-4, 10 epochs (x0.1 at 8), 4 per GPU on 8 GPUs
# Each pre-training is evaluated on RefCOCO, RefCOCO+ and RefCOCOg val, each fine-tuning on its dataset.
# Published numbers: none (the paper could not be found; alvg/README.md, "Results").
#
# Usage: scripts/alvg/train_pretrain_finetune_large.sh [--dry-run] [STAGE ...]
#   STAGE in: pretrain_mixed pretrain_cocoall finetune (default: pretrain_cocoall finetune)
# Env: NGPU (8), FINETUNE_DATASETS ("refcoco refcocoplus refcocog"), OUT_ROOT, DATA_ROOT/ALVG_DATA_ROOT,
#      BEIT3_DIR/BEIT3_CKPT_LARGE/BEIT3_SPM, ALVG_COMPAT, RESUME, DRY_RUN.
# Output: $OUT_ROOT/alvg/pretrain_large/{mixed,cocoall}/, $OUT_ROOT/alvg/finetune_large/<dataset>/
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_alvg.sh"
vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
alvg_paths
NGPU="${NGPU:-8}"
read -r -a finetune_datasets <<<"${FINETUNE_DATASETS:-refcoco refcocoplus refcocog}"

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(pretrain_cocoall finetune)
root="$OUT_ROOT/alvg"
for st in "${stages[@]}"; do
    vg_check_choice stage "$st" pretrain_mixed pretrain_cocoall finetune
    if [[ "$st" == finetune ]]; then
        init="$root/pretrain_large/cocoall/det_best.pth"
        vg_need_file "$init" "RefCOCO-all pre-trained model"
        for ds in "${finetune_datasets[@]}"; do
            vg_check_choice dataset "$ds" refcoco refcocoplus refcocog
            vg_section "ALVG large fine-tuning on $ds"
            alvg_train "$root/finetune_large/$ds" finetune beit3_large "$ds" --load_from "$init"
            alvg_eval "$root/finetune_large/$ds" "$root/finetune_large/$ds/det_best.pth" finetune beit3_large "$ds"
        done
    else
        src="${st#pretrain_}"
        vg_section "ALVG large pre-training on $src"
        alvg_train "$root/pretrain_large/$src" "$st" beit3_large "$src"
        for ds in refcoco refcocoplus refcocog; do
            alvg_eval "$root/pretrain_large/$src/eval_$ds" "$root/pretrain_large/$src/det_best.pth" "$st" \
                beit3_large "$src" "$ds" --masks "$([[ $src == mixed ]] && echo off || echo auto)"
        done
    fi
done
