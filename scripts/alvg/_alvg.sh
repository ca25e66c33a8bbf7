#!/usr/bin/env bash
# ALVG helpers shared by scripts/alvg/*.sh. Source after scripts/lib.sh and vg_init; never run directly.
#
# Environment (defaults relative to the repository root):
#   ALVG_DATA_ROOT    SeqTR layout: annotations/<name>/instances.json + images/   default $DATA_ROOT/seqtr
#                     (RefCOCO/+/g and gRefCOCO need the REC+RES annotations with masks)
#   BEIT3_CKPT_BASE   beit3_base_indomain_patch16_224.pth           defaults: $BEIT3_DIR/<name>
#   BEIT3_CKPT_LARGE  beit3_large_indomain_patch16_224.pth
#   BEIT3_SPM         beit3.spm (XLM-R sentencepiece)               default $BEIT3_DIR/beit3.spm
#   ALVG_COMPAT=1     pass --official_compat (every official quirk, and the batch-averaged metrics) to train
#                     and eval
#   STAGES            phases to run (e.g. "eval"); default all phases of the script
#
# The official recipes (configs/single/ViT-{base,large}/..., configs/mix/ViT-large/...) are encoded once for
# the scripts, in alvg_recipe; alvg/recipes.py holds the same table for the Python side.

ALVG_REC_DATASETS=(refcoco refcocoplus refcocog refcocoggoogle referit flickr30k)

alvg_paths() {
    ALVG_DATA_ROOT="${ALVG_DATA_ROOT:-$DATA_ROOT/seqtr}"
    BEIT3_CKPT_BASE="${BEIT3_CKPT_BASE:-$BEIT3_DIR/beit3_base_indomain_patch16_224.pth}"
    BEIT3_CKPT_LARGE="${BEIT3_CKPT_LARGE:-$BEIT3_DIR/beit3_large_indomain_patch16_224.pth}"
    BEIT3_SPM="${BEIT3_SPM:-$BEIT3_DIR/beit3.spm}"
    ALVG_COMPAT="${ALVG_COMPAT:-0}"
    STAGES="${STAGES:-}"
}

alvg_want() {
    [[ -z "$STAGES" ]] && return 0
    local s
    for s in $STAGES; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

# alvg_eval_sets DATASET: the splits the official tools/test.py evaluates.
alvg_eval_sets() {
    case "$1" in
        refcoco|refcocoplus|grefcoco) echo "val testA testB" ;;
        refcocog|referit|flickr30k) echo "val test" ;;
        refcocoggoogle) echo "val" ;;
        *) echo "error: no eval splits known for dataset $1" >&2; return 2 ;;
    esac
}

# alvg_backbone_args BACKBONE: sets ALVG_BB=(--backbone ... --beit3_ckpt ... --drop_path_rate ...).
# drop_path_rate: 0.1 for base; 0.0 for large (the official large branch loses it to the `rop_path_rate` typo).
alvg_backbone_args() {
    case "$1" in
        beit3_base) ALVG_BB=(--backbone beit3_base --beit3_ckpt "$BEIT3_CKPT_BASE" --drop_path_rate 0.1) ;;
        beit3_large) ALVG_BB=(--backbone beit3_large --beit3_ckpt "$BEIT3_CKPT_LARGE" --drop_path_rate 0.0) ;;
        *) echo "error: backbone must be beit3_base or beit3_large, got $1" >&2; return 2 ;;
    esac
}

# alvg_recipe PRESET BACKBONE DATASET: sets ALVG_HP to the official hyperparameters, ALVG_BS to the config's
# samples_per_gpu and ALVG_GPUS to the official GPU count (ViT-B single-dataset runs: 1, as the README's
# `python tools/train.py`; ViT-L and the mix configs: 8).
alvg_recipe() {
    local preset="$1" bb="$2" ds="$3"
    local lr=5e-4 bs=32 ep=30 wu=3 decay="25" ws=40 wd=1 q=1
    ALVG_GPUS=1
    local large=0; [[ "$bb" == beit3_large ]] && large=1
    case "$preset" in
        single)
            if [[ "$ds" == refcocoplus ]]; then ws=16; fi
            if [[ $large == 1 ]]; then
                bs=4; ws=32; ALVG_GPUS=8
                if [[ "$ds" != flickr30k ]]; then decay="21 27"; fi
            fi
            if [[ "$ds" == grefcoco ]]; then q=10; ep=250; decay="225"; ws=0; wd=0; fi ;;
        pretrain_mixed|pretrain_cocoall)
            bs=4; decay="21 27"; ws=32; ALVG_GPUS=8
            if [[ "$preset" == pretrain_cocoall ]]; then bs=8; fi ;;
        finetune)
            lr=2e-4; bs=4; ep=10; decay="8"; ws=32; ALVG_GPUS=8 ;;
        *) echo "error: unknown preset $preset" >&2; return 2 ;;
    esac
    ALVG_BS="$bs"
    # shellcheck disable=SC2206
    ALVG_HP=(--lr "$lr" --lr_vis_enc_mult 0.1 --epochs "$ep" --warmup_epochs "$wu" --decay_steps $decay
             --decay_ratio 0.1 --grad_norm_clip 0.15 --img_size 640 --max_token 20 --num_queries "$q"
             --score_attn_loss_weight "$ws" --decoder_attn_loss_weight "$wd")
    if [[ "$ds" == grefcoco ]]; then ALVG_HP+=(--evaluate_interval 2 --start_evaluate_epoch 50); fi
}

alvg_common_args() {
    ALVG_COMMON=(--data_root "$ALVG_DATA_ROOT" --beit3_spm "$BEIT3_SPM" --device "$DEVICE")
    if [[ "$ALVG_COMPAT" == "1" ]]; then ALVG_COMMON+=(--official_compat); fi
}

# alvg_train OUT_DIR PRESET BACKBONE DATASET ARGS...: one training run with the official recipe and global
# batch; ARGS (e.g. --load_from) are appended.
alvg_train() {
    local out="$1" preset="$2" bb="$3" ds="$4"; shift 4
    alvg_common_args
    alvg_backbone_args "$bb"
    alvg_recipe "$preset" "$bb" "$ds"
    local VG_NPROC VG_BS VG_ACCUM VG_BATCH_ARGS
    vg_batch "$ALVG_GPUS" "$ALVG_BS"
    local resume=()
    mapfile -t resume < <(vg_resume_args "$out" latest.pth)
    vg_launch alvg/train.py --preset "$preset" --dataset "$ds" "${ALVG_BB[@]}" "${ALVG_COMMON[@]}" \
        --num_workers "$NUM_WORKERS" "${ALVG_HP[@]}" "${VG_BATCH_ARGS[@]}" "$@" --output_dir "$out" \
        "${resume[@]+"${resume[@]}"}"
}

# alvg_eval OUT_DIR CKPT PRESET BACKBONE DATASET [EVAL_DATASET [ARGS...]]: evaluate CKPT on the splits of
# EVAL_DATASET (default DATASET) with the config's samples_per_gpu as batch size (the official batch-averaged
# numbers depend on it).
alvg_eval() {
    local out="$1" ckpt="$2" preset="$3" bb="$4" ds="$5" eds="${6:-$5}"
    shift 5; [[ $# -gt 0 ]] && shift
    alvg_common_args
    alvg_recipe "$preset" "$bb" "$ds"
    local q=1
    if [[ "$eds" == grefcoco ]]; then q=10; fi
    local sets; sets=$(alvg_eval_sets "$eds")
    # shellcheck disable=SC2086
    vg_launch alvg/eval.py --preset "$preset" --dataset "$eds" --backbone "$bb" "${ALVG_COMMON[@]}" \
        --num_workers "$NUM_WORKERS" --img_size 640 --max_token 20 --num_queries "$q" --batch_size "$ALVG_BS" \
        "$@" --load_from "$ckpt" --eval_sets $sets --output_dir "$out"
}

# alvg_single BACKBONE DATASET ROOT: single-dataset training into ROOT, then evaluation of det_best.pth.
alvg_single() {
    local bb="$1" ds="$2" root="$3"
    vg_section "ALVG ${bb#beit3_} $ds"
    if alvg_want train; then alvg_train "$root" single "$bb" "$ds"; fi
    if alvg_want eval; then alvg_eval "$root" "$root/det_best.pth" single "$bb" "$ds"; fi
}
