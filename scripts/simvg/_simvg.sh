#!/usr/bin/env bash
# SimVG helpers shared by scripts/simvg/*.sh. Source after scripts/lib.sh and vg_init; never run directly.
#
# Environment (defaults relative to the repository root):
#   SIMVG_DATA_ROOT   SeqTR layout: annotations/<name>/instances.json + images/   default $DATA_ROOT/seqtr
#   BEIT3_CKPT_BASE   beit3_base_patch16_224.pth  (the ".zip" of the official configs is the same file)
#   BEIT3_CKPT_LARGE  beit3_large_patch16_224.pth                 defaults: $BEIT3_DIR/<name>
#   BEIT3_SPM         beit3.spm (XLM-R sentencepiece)             default $BEIT3_DIR/beit3.spm
#   SIMVG_COMPAT=1    pass --official_compat (text pooling at positions 18/19, degenerate text position
#                     encoding, batch-averaged metric) to train and eval
#   STAGES            phases to run (e.g. "stage2 eval"); default all phases of the script
#
# Official recipes are encoded once, in simvg_recipe (the official config values).

SIMVG_REC_DATASETS=(refcoco refcocoplus refcocog refcocoggoogle referit flickr30k)

simvg_paths() {
    SIMVG_DATA_ROOT="${SIMVG_DATA_ROOT:-$DATA_ROOT/seqtr}"
    BEIT3_CKPT_BASE="${BEIT3_CKPT_BASE:-$BEIT3_DIR/beit3_base_patch16_224.pth}"
    BEIT3_CKPT_LARGE="${BEIT3_CKPT_LARGE:-$BEIT3_DIR/beit3_large_patch16_224.pth}"
    BEIT3_SPM="${BEIT3_SPM:-$BEIT3_DIR/beit3.spm}"
    SIMVG_COMPAT="${SIMVG_COMPAT:-0}"
    STAGES="${STAGES:-}"
}

simvg_want() {
    [[ -z "$STAGES" ]] && return 0
    local s
    for s in $STAGES; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

# simvg_eval_sets DATASET: splits evaluated by the official tools/test.py for that dataset.
simvg_eval_sets() {
    case "$1" in
        refcoco|refcocoplus|grefcoco) echo "val testA testB" ;;
        refcocog|referit|flickr30k) echo "val test" ;;
        refcocoggoogle) echo "val" ;;
        *) echo "error: no eval splits known for dataset $1" >&2; return 2 ;;
    esac
}

# simvg_backbone_args BACKBONE: sets SIMVG_BB=(--backbone ... --beit3_ckpt ... --drop_path_rate ...).
# drop_path_rate: 0.1 for base; 0.0 for large (the official large branch drops the value through the
# `rop_path_rate` typo).
simvg_backbone_args() {
    case "$1" in
        beit3_base) SIMVG_BB=(--backbone beit3_base --beit3_ckpt "$BEIT3_CKPT_BASE" --drop_path_rate 0.1) ;;
        beit3_large) SIMVG_BB=(--backbone beit3_large --beit3_ckpt "$BEIT3_CKPT_LARGE" --drop_path_rate 0.0) ;;
        *) echo "error: backbone must be beit3_base or beit3_large, got $1" >&2; return 2 ;;
    esac
}

# simvg_recipe PRESET BACKBONE DATASET [PRETRAIN_FROM]: sets SIMVG_HP to the official hyperparameters of
# configs/<family>/<backbone>/<dataset>..., SIMVG_BS to the config's samples_per_gpu, SIMVG_GPUS to the
# official GPU count (8 for the mix pre-training configs, 1 otherwise) and SIMVG_EMA=1 when the config has
# ema=True.
# PRETRAIN_FROM (mixed|cocoall) selects the finetune/distill variant.
simvg_recipe() {
    local preset="$1" bb="$2" ds="$3" src="${4:-}"
    local lr bs ep wu decay tw=0 dw=0 img=640 q=1 lsj=1
    SIMVG_EMA=0; SIMVG_GPUS=1
    local large=0; [[ "$bb" == beit3_large ]] && large=1
    case "$preset" in
        onestage)
            lr=5e-4; bs=32; ep=30; wu=3; decay="25"; tw=2.0; dw=1.0
            if [[ $large == 1 ]]; then
                bs=4; tw=1.0; dw=0.4
                if [[ "$ds" == referit ]]; then tw=2.0; dw=1.0; fi
                if [[ "$ds" == refcocoggoogle ]]; then wu=0; fi
            fi
            if [[ "$ds" == grefcoco ]]; then ep=200; decay="180"; q=10; lsj=0; fi ;;
        twostage_1)
            lr=5e-4; bs=32; ep=30; wu=3; decay="25"
            if [[ $large == 1 ]]; then
                bs=4; decay="21 27"
            elif vg_in_list "$ds" refcoco refcocoplus refcocog refcocoggoogle; then
                bs=16; SIMVG_EMA=1
            fi
            if [[ "$ds" == grefcoco ]]; then ep=200; decay="180"; q=10; lsj=0; fi ;;
        twostage_2)
            lr=3e-4; bs=32; ep=20; wu=3; decay="15"; tw=2.0; dw=1.0
            if [[ $large == 1 ]]; then
                lr=1e-4; bs=4; ep=10; wu=0; decay="7"; tw=1.0; dw=0.4
                if [[ "$ds" == referit ]]; then tw=2.0; dw=1.0; fi
            fi
            if [[ "$ds" == grefcoco ]]; then lr=5e-4; ep=100; decay="90"; q=10; lsj=0; fi ;;
        pretrain_mixed|pretrain_cocoall)
            lr=5e-4; bs=32; ep=30; wu=3; decay="21 27"; lsj=0
            SIMVG_GPUS=8
            if [[ "$preset" == pretrain_cocoall ]]; then img=512; fi
            if [[ $large == 1 ]]; then bs=4; fi ;;
        finetune)
            lr=1e-4; bs=32; ep=10; wu=3; decay="8"
            if [[ "$src" == cocoall && "$ds" == refcoco ]]; then lr=2e-4; fi
            if [[ $large == 1 ]]; then bs=4; fi ;;
        distill)
            lr=3e-4; bs=32; wu=3
            if [[ "$src" == mixed ]]; then ep=15; decay="10"; tw=2.0; dw=1.0
            else ep=20; decay="15"; tw=1.0; dw=0.4; fi
            if [[ $large == 1 ]]; then bs=4; fi ;;
        *) echo "error: unknown preset $preset" >&2; return 2 ;;
    esac
    # shellcheck disable=SC2206
    SIMVG_BS="$bs"
    SIMVG_HP=(--lr "$lr" --lr_vis_enc_mult 0.1 --epochs "$ep" --warmup_epochs "$wu"
              --decay_steps $decay --decay_ratio 0.1 --grad_norm_clip 0.15
              --img_size "$img" --max_token 20 --num_queries "$q"
              --decoder_weight 1.0 --token_weight "$tw" --distill_weight "$dw")
    if [[ $lsj == 0 ]]; then SIMVG_HP+=(--no_lsj); fi
    if [[ $SIMVG_EMA == 1 ]]; then SIMVG_HP+=(--ema); fi
    if [[ "$ds" == grefcoco ]]; then SIMVG_HP+=(--evaluate_interval 2 --start_evaluate_epoch 50); fi
    if [[ -n "$src" ]]; then SIMVG_HP+=(--pretrain_from "$src"); fi
}

simvg_common_args() {
    SIMVG_COMMON=(--data_root "$SIMVG_DATA_ROOT" --beit3_spm "$BEIT3_SPM" --device "$DEVICE")
    if [[ "$SIMVG_COMPAT" == "1" ]]; then SIMVG_COMMON+=(--official_compat); fi
}

# simvg_train OUT_DIR PRESET BACKBONE DATASET PRETRAIN_FROM ARGS...: one training run with the official
# recipe; ARGS (e.g. --load_from / --finetune_from) are appended. PRETRAIN_FROM may be "".
simvg_train() {
    local out="$1" preset="$2" bb="$3" ds="$4" src="$5"; shift 5
    simvg_common_args
    simvg_backbone_args "$bb"
    simvg_recipe "$preset" "$bb" "$ds" "$src"
    local VG_NPROC VG_BS VG_ACCUM VG_BATCH_ARGS
    vg_batch "$SIMVG_GPUS" "$SIMVG_BS"
    local resume=()
    mapfile -t resume < <(vg_resume_args "$out" latest.pth)
    vg_launch simvg/train.py --preset "$preset" --dataset "$ds" "${SIMVG_BB[@]}" "${SIMVG_COMMON[@]}" \
        --num_workers "$NUM_WORKERS" "${SIMVG_HP[@]}" "${VG_BATCH_ARGS[@]}" "$@" --output_dir "$out" \
        "${resume[@]+"${resume[@]}"}"
}

# simvg_eval OUT_DIR CKPT PRESET BACKBONE DATASET [EVAL_DATASET [ARGS...]]: evaluate CKPT (DB and TB) on
# the splits of EVAL_DATASET (default DATASET) with the config's samples_per_gpu as batch size, as the
# official tools/test.py (its batch-averaged accuracy depends on it); EMA weights when the recipe has EMA.
simvg_eval() {
    local out="$1" ckpt="$2" preset="$3" bb="$4" ds="$5" eds="${6:-$5}"
    shift 5; [[ $# -gt 0 ]] && shift
    simvg_common_args
    simvg_recipe "$preset" "$bb" "$ds" ""
    local extra=()
    if [[ $SIMVG_EMA == 1 ]]; then extra+=(--use_ema); fi
    local img=640 q=1
    if [[ "$preset" == pretrain_cocoall ]]; then img=512; fi
    if [[ "$eds" == grefcoco ]]; then q=10; fi
    local sets; sets=$(simvg_eval_sets "$eds")
    # shellcheck disable=SC2086
    vg_launch simvg/eval.py --preset "$preset" --dataset "$eds" --backbone "$bb" "${SIMVG_COMMON[@]}" \
        --num_workers "$NUM_WORKERS" --img_size "$img" --max_token 20 --num_queries "$q" --batch_size "$SIMVG_BS" \
        "${extra[@]+"${extra[@]}"}" "$@" --load_from "$ckpt" --eval_sets $sets --output_dir "$out"
}

# simvg_single PRESET_KIND BACKBONE DATASET ROOT: single-dataset training.
#   PRESET_KIND onestage: ROOT/onestage (DB + TB with DWBD in one run), then eval.
#   PRESET_KIND twostage: ROOT/stage1 (DB only) -> eval -> ROOT/stage2 (--load_from stage-1 det_best.pth,
#                         DB + TB with DWBD) -> eval.
simvg_single() {
    local kind="$1" bb="$2" ds="$3" root="$4"
    local tag="SimVG ${bb#beit3_} $ds"
    if [[ "$kind" == onestage ]]; then
        vg_section "$tag one-stage distillation"
        if simvg_want train; then simvg_train "$root/onestage" onestage "$bb" "$ds" ""; fi
        if simvg_want eval; then simvg_eval "$root/onestage" "$root/onestage/det_best.pth" onestage "$bb" "$ds"; fi
    elif [[ "$kind" == twostage ]]; then
        vg_section "$tag two-stage distillation, stage 1 (decoder branch only)"
        if simvg_want stage1; then simvg_train "$root/stage1" twostage_1 "$bb" "$ds" ""; fi
        if simvg_want eval; then simvg_eval "$root/stage1" "$root/stage1/det_best.pth" twostage_1 "$bb" "$ds"; fi
        vg_section "$tag two-stage distillation, stage 2 (DWBD into the token branch)"
        if simvg_want stage2; then
            simvg_train "$root/stage2" twostage_2 "$bb" "$ds" "" --load_from "$root/stage1/det_best.pth"
        fi
        if simvg_want eval; then simvg_eval "$root/stage2" "$root/stage2/det_best.pth" twostage_2 "$bb" "$ds"; fi
    else
        echo "error: recipe must be onestage or twostage, got $kind" >&2; return 2
    fi
}

# simvg_pretrain BACKBONE SOURCE ROOT: pre-training on SOURCE (mixed|cocoall) into ROOT, then the val
# sets the official test tool reports for a mix model (RefCOCO, RefCOCO+, RefCOCOg val).
simvg_pretrain() {
    local bb="$1" src="$2" root="$3" ds
    vg_section "SimVG ${bb#beit3_} pre-training on $src"
    if simvg_want pretrain; then simvg_train "$root" "pretrain_$src" "$bb" "$src" ""; fi
    if simvg_want eval; then
        for ds in refcoco refcocoplus refcocog; do
            simvg_eval "$root/eval_$ds" "$root/det_best.pth" "pretrain_$src" "$bb" "$src" "$ds"
        done
    fi
}

# simvg_after_pretrain PRESET(finetune|distill) BACKBONE SOURCE DATASET ROOT PRETRAIN_CKPT
simvg_after_pretrain() {
    local preset="$1" bb="$2" src="$3" ds="$4" root="$5" init="$6"
    vg_check_choice dataset "$ds" refcoco refcocoplus refcocog
    vg_section "SimVG ${bb#beit3_} $preset ($src pre-training) on $ds"
    if simvg_want "$preset"; then
        simvg_train "$root" "$preset" "$bb" "$ds" "$src" --finetune_from "$init"
    fi
    if simvg_want eval; then simvg_eval "$root" "$root/det_best.pth" "$preset" "$bb" "$ds"; fi
}
