#!/usr/bin/env bash
# HiVG helpers shared by scripts/hivg/*.sh. Source after scripts/lib.sh and vg_init; never run directly.
#
# Environment (defaults are relative to the repository root):
#   HIVG_DATA_ROOT   image root (mscoco / referit / Flickr30k below it)   default $DATA_ROOT/image_data
#   SPLIT_ROOT       HiVG's shuffled split files <ds>/<ds>_<split>.pth    default $DATA_ROOT/ref_data_shuffled
#   CLIP_DIR         plain CLIP weights (HF folders clip-vit-base-patch16, clip-vit-large-patch14)
#   DEBIASED_CLIP_B  clip_b_ml_cascade_maskrcnn_model_224.pth             default $CLIP_DIR/<that name>
#   DEBIASED_CLIP_L  clip_l_ml_cascade_maskrcnn_model_224.pth             default $CLIP_DIR/<that name>
#   USE_DEBIASED_CLIP=0  start from plain CLIP instead (the paper's numbers need the debiased file; ~-7
#                        points on RefCOCOg without it, HiVG issue #12)
#   HIVG_COMPAT=1    pass --bridge_batch_mixing (reproduce the official bridge's cross-sample mixing)
#   STAGES           phases to run, e.g. "stage2 stage3 eval" (default: all phases of the script)
#   EVAL_ALL_PHASES=1  also evaluate after every intermediate phase (the official scripts do)
#
# Stage hand-over (one checkpoint): every phase writes <run>/<phase>/best_checkpoint.pth holding the
# whole model (CLIP + the one LoRA adapter set + bridge + fusion + heads). HiLoRA stage k starts from
# the previous phase's best_checkpoint.pth via --hi_lora_retrain (base mixup differs, see hivg_mixup); the
# L/14 warm-2 phase starts from warm-1 via --retrain (weights only; the bridge is new).

HIVG_DATASETS=(unc unc+ gref_umd referit flickr)
# Every official HiVG training script ran on 7 GPUs (--nproc_per_node=7); batch sizes are per GPU.
HIVG_OFFICIAL_GPUS=7

hivg_paths() {
    HIVG_DATA_ROOT="${HIVG_DATA_ROOT:-$DATA_ROOT/image_data}"
    SPLIT_ROOT="${SPLIT_ROOT:-$DATA_ROOT/ref_data_shuffled}"
    DEBIASED_CLIP_B="${DEBIASED_CLIP_B:-$CLIP_DIR/clip_b_ml_cascade_maskrcnn_model_224.pth}"
    DEBIASED_CLIP_L="${DEBIASED_CLIP_L:-$CLIP_DIR/clip_l_ml_cascade_maskrcnn_model_224.pth}"
    USE_DEBIASED_CLIP="${USE_DEBIASED_CLIP:-1}"
    HIVG_COMPAT="${HIVG_COMPAT:-0}"
    EVAL_ALL_PHASES="${EVAL_ALL_PHASES:-0}"
    STAGES="${STAGES:-}"
}

# hivg_want PHASE: true if PHASE should run (STAGES empty = all).
hivg_want() {
    [[ -z "$STAGES" ]] && return 0
    local s
    for s in $STAGES; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

# hivg_eval_sets DATASET: the splits the paper reports (plus val), as the official eval scripts.
hivg_eval_sets() {
    case "$1" in
        unc|unc+) echo "val testA testB" ;;
        gref_umd|referit|flickr|mixup) echo "val test" ;;
        *) echo "error: no eval splits known for dataset $1" >&2; return 2 ;;
    esac
}

# hivg_arch SIZE: model-size flags (base = ViT-B/16 "HiVG", large = ViT-L/14 "HiVG-L").
hivg_arch() {
    case "$1" in
        base) echo "--model ViT-B/16 --vl_hidden_dim 512" ;;
        large) echo "--model ViT-L/14 --vl_hidden_dim 768" ;;
        *) echo "error: model size must be base or large, got $1" >&2; return 2 ;;
    esac
}

# hivg_clip_args SIZE FIRST_PHASE: sets HIVG_CLIP=(--clip_model <debiased CLIP>) for the first phase
# (empty with USE_DEBIASED_CLIP=0). Fails early in a real run if the file is missing and FIRST_PHASE runs.
hivg_clip_args() {
    HIVG_CLIP=()
    [[ "$USE_DEBIASED_CLIP" == "1" ]] || return 0
    hivg_want "$2" || return 0
    local f
    if [[ "$1" == base ]]; then f="$DEBIASED_CLIP_B"; else f="$DEBIASED_CLIP_L"; fi
    vg_need_file "$f" "debiased CLIP ($1)"
    HIVG_CLIP=(--clip_model "$f")
}

# Flags shared by train and eval commands.
hivg_common_args() {
    HIVG_COMMON=(--imsize 224 --max_query_len 77 --normalize_before
                 --data_root "$HIVG_DATA_ROOT" --split_root "$SPLIT_ROOT" --clip_dir "$CLIP_DIR"
                 --device "$DEVICE")
    if [[ "$HIVG_COMPAT" == "1" ]]; then HIVG_COMMON+=(--bridge_batch_mixing); fi
}

# hivg_train OUT_DIR BATCH ARGS...: one training phase into OUT_DIR (official common training flags added).
# BATCH is the official per-GPU batch; the official global batch (7 x BATCH) is kept on NGPU x NNODES GPUs
# through the per-GPU batch and gradient accumulation (vg_batch).
hivg_train() {
    local out="$1" bs="$2"; shift 2
    hivg_common_args
    local VG_NPROC VG_BS VG_ACCUM VG_BATCH_ARGS
    vg_batch "$HIVG_OFFICIAL_GPUS" "$bs"
    local resume=()
    mapfile -t resume < <(vg_resume_args "$out" checkpoint.pth)
    vg_launch hivg/train.py --num_workers "$NUM_WORKERS" "${HIVG_COMMON[@]}" \
        --aug_crop --aug_scale --aug_translate --lr_scheduler cosine \
        --use_contrastive_loss --use_rtcc_constrain_loss --use_mask_loss \
        "$@" "${VG_BATCH_ARGS[@]}" --output_dir "$out" "${resume[@]+"${resume[@]}"}"
}

# hivg_eval OUT_DIR CKPT DATASET BATCH ARGS...: evaluate CKPT on every reported split of DATASET.
# ARGS carry the model flags (arch, --enable_adaptive_weights / --mixup_pretrain, --hi_lora_stage).
hivg_eval() {
    local out="$1" ckpt="$2" ds="$3" bs="$4"; shift 4
    hivg_common_args
    local split
    for split in $(hivg_eval_sets "$ds"); do
        vg_launch hivg/eval.py --num_workers 2 "${HIVG_COMMON[@]}" --use_mask_loss \
            --dataset "$ds" --batch_size "$bs" "$@" \
            --eval_model "$ckpt" --eval_set "$split" --output_dir "$out"
    done
}

# hivg_finetune SIZE DATASET ROOT: the full single-dataset recipe (warm-up + HiLoRA stages 1-3 + eval)
# for one dataset into ROOT/<phase>. Official epochs / batch sizes / learning rates
# of train_single_dataset_finetuning_base.sh / _large_1_warm.sh / _large_2.sh.
hivg_finetune() {
    local size="$1" ds="$2" root="$3"
    vg_check_choice dataset "$ds" "${HIVG_DATASETS[@]}"
    local arch; arch=$(hivg_arch "$size")
    local first=warmup; [[ "$size" == base ]] || first=warm1
    hivg_clip_args "$size" "$first"; local clip=("${HIVG_CLIP[@]+"${HIVG_CLIP[@]}"}")
    # shellcheck disable=SC2206
    local archv=($arch)
    local model=("${archv[@]}" --dataset "$ds")
    local aw=(--enable_adaptive_weights)
    local lrs=(1e-4 5e-5 2.5e-5) stage_ep stage_bs=() eval_bs prev k
    if [[ "$size" == base ]]; then
        # warm-up: 60 epochs (flickr 30), batch 80, lr 2.5e-4; stages: 20 epochs (flickr 5), batch 60/60/40
        local wep=60; stage_ep=20; stage_bs=(60 60 40); eval_bs=60
        if [[ "$ds" == flickr ]]; then wep=30; stage_ep=5; stage_bs=(60 60 60); fi
        vg_section "HiVG-B $ds warm-up (HiLoRA stage 0)"
        if hivg_want warmup; then
            hivg_train "$root/warmup" 80 "${model[@]}" "${aw[@]}" --epochs "$wep" --lr 2.5e-4 \
                "${clip[@]+"${clip[@]}"}"
            if [[ "$EVAL_ALL_PHASES" == 1 ]]; then
                hivg_eval "$root/warmup" "$root/warmup/best_checkpoint.pth" "$ds" 64 \
                    "${archv[@]}" "${aw[@]}"
            fi
        fi
        prev="$root/warmup"
    else
        # warm-1 (no bridge): 10 epochs (referit 5); warm-2: 60 epochs (flickr 30); stages 10 (flickr 5); batch 32
        local w1ep=10 w2ep=60; stage_ep=10; stage_bs=(32 32 32); eval_bs=32
        if [[ "$ds" == referit ]]; then w1ep=5; fi
        if [[ "$ds" == flickr ]]; then w2ep=30; stage_ep=5; fi
        vg_section "HiVG-L $ds warm-1 (--warmup, no bridge)"
        if hivg_want warm1; then
            hivg_train "$root/warm1" 32 "${model[@]}" --warmup --epochs "$w1ep" --lr 2.5e-4 \
                "${clip[@]+"${clip[@]}"}"
        fi
        vg_section "HiVG-L $ds warm-2 (bridge on, from warm-1)"
        if hivg_want warm2; then
            hivg_train "$root/warm2" 32 "${model[@]}" "${aw[@]}" --epochs "$w2ep" --lr 2.5e-4 \
                --retrain "$root/warm1/best_checkpoint.pth"
            if [[ "$EVAL_ALL_PHASES" == 1 ]]; then
                hivg_eval "$root/warm2" "$root/warm2/best_checkpoint.pth" "$ds" 64 \
                    "${archv[@]}" "${aw[@]}"
            fi
        fi
        prev="$root/warm2"
    fi
    for k in 1 2 3; do
        vg_section "HiVG-${size} $ds HiLoRA stage $k"
        if hivg_want "stage$k"; then
            hivg_train "$root/stage$k" "${stage_bs[$((k-1))]}" "${model[@]}" "${aw[@]}" --hi_lora_stage "$k" \
                --epochs "$stage_ep" --lr "${lrs[$((k-1))]}" \
                --hi_lora_retrain "$prev/best_checkpoint.pth"
            if [[ "$EVAL_ALL_PHASES" == 1 && "$k" != 3 ]]; then
                hivg_eval "$root/stage$k" "$root/stage$k/best_checkpoint.pth" "$ds" "$eval_bs" \
                    "${archv[@]}" "${aw[@]}" --hi_lora_stage "$k"
            fi
        fi
        prev="$root/stage$k"
    done
    vg_section "HiVG-${size} $ds evaluation (stage 3)"
    if hivg_want eval; then
        hivg_eval "$root/stage3" "$root/stage3/best_checkpoint.pth" "$ds" "$eval_bs" \
            "${archv[@]}" "${aw[@]}" --hi_lora_stage 3
    fi
}

# hivg_mixup_eval SIZE CKPT OUT_ROOT: evaluate one mixup-pretrained checkpoint on every split of the five
# benchmarks (no fine-tuning), as train_and_eval_script/eval_mixup_grounding_pretraining_*.sh (batch 64).
hivg_mixup_eval() {
    local size="$1" ckpt="$2" out="$3" ds arch
    arch=$(hivg_arch "$size")
    for ds in "${HIVG_DATASETS[@]}"; do
        vg_section "HiVG-${size} mixup model on $ds"
        # shellcheck disable=SC2086
        hivg_eval "$out/$ds" "$ckpt" "$ds" 64 $arch --mixup_pretrain --hi_lora_stage 3
    done
}

# hivg_mixup SIZE ROOT: dataset-mixed pre-training (train_mixup_grounding_pretraining_<size>.sh) into
# ROOT/<phase>, then evaluation.
# Hand-over between phases as in the official scripts. Base: HiLoRA stage k starts from the previous phase's
# last-epoch checkpoint.pth (heads, fusion) plus the CLIP towers, LoRA and bridges of its best_checkpoint.pth,
# which an evaluation with --save_hilora_clip writes as clip_lora_stage_with_bridge.pth (--hi_lora_clip).
# Large: every stage starts from the previous phase's best_checkpoint.pth.
hivg_mixup() {
    local size="$1" root="$2" arch prev k
    arch=$(hivg_arch "$size")
    local first=warmup; [[ "$size" == base ]] || first=warm1
    hivg_clip_args "$size" "$first"; local clip=("${HIVG_CLIP[@]+"${HIVG_CLIP[@]}"}")
    # shellcheck disable=SC2206
    local archv=($arch)
    local model=("${archv[@]}" --dataset mixup --mixup_pretrain)
    local lrs=(1e-4 5e-5 2e-5) stage_ep bs from=()
    if [[ "$size" == base ]]; then
        bs=64; stage_ep=20
        vg_section "HiVG-B mixup warm-up"
        if hivg_want warmup; then
            hivg_train "$root/warmup" 64 "${model[@]}" --epochs 60 --lr 2.5e-4 "${clip[@]+"${clip[@]}"}"
            hivg_eval "$root/warmup" "$root/warmup/best_checkpoint.pth" mixup 64 "${archv[@]}" --mixup_pretrain \
                --save_hilora_clip
        fi
        prev="$root/warmup"
    else
        bs=32; stage_ep=10
        vg_section "HiVG-L mixup warm-1 (--warmup, no bridge)"
        if hivg_want warm1; then
            hivg_train "$root/warm1" 32 "${model[@]}" --warmup --epochs 10 --lr 2.5e-4 \
                "${clip[@]+"${clip[@]}"}"
        fi
        vg_section "HiVG-L mixup warm-2"
        if hivg_want warm2; then
            hivg_train "$root/warm2" 32 "${model[@]}" --epochs 30 --lr 2.5e-4 \
                --retrain "$root/warm1/best_checkpoint.pth"
        fi
        prev="$root/warm2"
    fi
    for k in 1 2 3; do
        vg_section "HiVG-${size} mixup HiLoRA stage $k"
        if [[ "$size" == base ]]; then
            from=(--hi_lora_retrain "$prev/checkpoint.pth" --hi_lora_clip "$prev/clip_lora_stage_with_bridge.pth")
        else
            from=(--hi_lora_retrain "$prev/best_checkpoint.pth")
        fi
        if hivg_want "stage$k"; then
            hivg_train "$root/stage$k" "$bs" "${model[@]}" --hi_lora_stage "$k" --epochs "$stage_ep" \
                --lr "${lrs[$((k-1))]}" "${from[@]}"
            if [[ "$size" == base && "$k" != 3 ]]; then
                hivg_eval "$root/stage$k" "$root/stage$k/best_checkpoint.pth" mixup 64 "${archv[@]}" \
                    --mixup_pretrain --hi_lora_stage "$k" --save_hilora_clip
            fi
        fi
        prev="$root/stage$k"
    done
    if hivg_want eval; then
        hivg_mixup_eval "$size" "$root/stage3/best_checkpoint.pth" "$root/eval"
    fi
}
