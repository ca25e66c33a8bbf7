#!/usr/bin/env bash
# VG-LAW helpers shared by scripts/vglaw/*.sh. Source after scripts/lib.sh and vg_init; never run directly.
#
# Environment (defaults relative to the repository root):
#   REFER_ROOT     the official refer layout: <root>/<dataset>/refs(<splitBy>).p + instances.json and the images
#                  below <root>/images/mscoco/images/train2014, <root>/images/saiapr_tc-12   default $DATA_ROOT/refer
#   VITDET_CKPT    detectron2 ViTDet ViT-B COCO Mask R-CNN, model_final_61ccd1.pkl
#                                                           default ./checkpoints/vitdet/model_final_61ccd1.pkl
#   BERT_DIR       HF bert-base-uncased folder: vocab.txt + pytorch_model.bin or model.safetensors (its first 6
#                  layers are loaded)                       default ./checkpoints/bert-base-uncased
#   VGLAW_BS       largest per-GPU batch (default 8, the official parser's default; the released scripts ran 1
#                  per GPU, a MindSpore memory workaround: VGLAW_BS=1 on 4 GPUs is their exact layout)
#   VGLAW_COMPAT=1 the MindSpore port's numerics and its constant learning rates (--official_compat
#                  --compat_constant_lr)
#   STAGES         phases to run, e.g. "stage2 eval" (default: stage1 stage2 eval)
#
# Global batch: every official run used 4 GPUs x batch 1 x 64 accumulation steps = 256 (--batch_sum 256);
# vglaw_batch keeps 256 on any GPU count (vglaw/train.py accumulates --batch_sum / (--batch_size x processes)
# batches). The warm-up (official: 8000 batches of 1 on each of the 4 processes = 32,000 samples = 125
# optimizer steps) is passed in batches per process of the layout at hand, so it covers the same samples.

VGLAW_DATASETS=(refcoco refcoco+ refcocog refclef)
VGLAW_GLOBAL_BATCH=256
VGLAW_OFFICIAL_GPUS=4
VGLAW_WARMUP_SAMPLES=32000

vglaw_paths() {
    REFER_ROOT="${REFER_ROOT:-$DATA_ROOT/refer}"
    VITDET_CKPT="${VITDET_CKPT:-./checkpoints/vitdet/model_final_61ccd1.pkl}"
    BERT_DIR="${BERT_DIR:-./checkpoints/bert-base-uncased}"
    VGLAW_BS="${VGLAW_BS:-8}"
    VGLAW_COMPAT="${VGLAW_COMPAT:-0}"
    STAGES="${STAGES:-}"
}

vglaw_want() {
    [[ -z "$STAGES" ]] && return 0
    local s
    for s in $STAGES; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

# vglaw_split_by DATASET: the splitBy of the released scripts.
vglaw_split_by() {
    case "$1" in
        refcoco|refcoco+) echo unc ;;
        refcocog) echo umd ;;
        refclef) echo berkeley ;;
        *) echo "error: unknown VG-LAW dataset $1" >&2; return 2 ;;
    esac
}

# vglaw_eval_sets DATASET: the official evaluation splits.
vglaw_eval_sets() {
    case "$1" in
        refcoco|refcoco+) echo "val testA testB" ;;
        refcocog) echo "val test" ;;
        refclef) echo "test" ;;
        *) echo "error: unknown VG-LAW dataset $1" >&2; return 2 ;;
    esac
}

# vglaw_batch: the layout for the global batch of 256 on NGPU x NNODES GPUs. Sets VG_NPROC (processes per
# machine: the largest p <= NGPU with 256 divisible by p x NNODES), VG_BS (the largest per-GPU batch <=
# VGLAW_BS dividing 256 / (p x NNODES)), VG_ACCUM, and VGLAW_BATCH_ARGS (--batch_size --batch_sum
# --warmup_steps); prints the "# batch: ..." line.
vglaw_batch() {
    local global="$VGLAW_GLOBAL_BATCH" nodes="${NNODES:-1}" ngpu="${NGPU:-$VGLAW_OFFICIAL_GPUS}" p b share
    for ((p = ngpu; p >= 1; p--)); do
        (( global % (p * nodes) == 0 )) && break
    done
    if (( p < 1 )); then
        printf 'error: the global batch %d cannot be split over %d machines\n' "$global" "$nodes" >&2
        return 2
    fi
    if (( p < ngpu )); then
        printf '# note: global batch %d is not divisible by %d GPUs per machine x %d machines; using %d per machine\n' \
            "$global" "$ngpu" "$nodes" "$p"
    fi
    share=$((global / (p * nodes)))
    for ((b = VGLAW_BS < share ? VGLAW_BS : share; b >= 1; b--)); do
        (( share % b == 0 )) && break
    done
    VG_NPROC="$p"; VG_BS="$b"; VG_ACCUM=$((share / b))
    VGLAW_BATCH_ARGS=(--batch_size "$VG_BS" --batch_sum "$global"
                      --warmup_steps "$((VGLAW_WARMUP_SAMPLES / (VG_BS * p * nodes)))")
    printf '# batch: %d processes x per-GPU %d x accumulation %d = global %d (official: %d GPUs x 1 x accumulation %d)\n' \
        "$((p * nodes))" "$VG_BS" "$VG_ACCUM" "$global" "$VGLAW_OFFICIAL_GPUS" "$((global / VGLAW_OFFICIAL_GPUS))"
}

vglaw_data_args() {
    local ds="$1"
    VGLAW_DATA=(--dataset "$ds" --splitBy "$(vglaw_split_by "$ds")" --split_root "$REFER_ROOT"
                --data_root "$REFER_ROOT" --bert_model "$BERT_DIR" --num_workers "$NUM_WORKERS" --device "$DEVICE")
}

# vglaw_train OUT_DIR DATASET LR_LANG LR_VISUAL LR_BASE ARGS...: one run of the released recipe (multi-task
# svd, 448 px, 20 epochs with x0.1 at epoch 10, translate, AdamW eps 1e-6 + decay 1e-4, clip 0.15); ARGS
# (the starting weights) are appended.
vglaw_train() {
    local out="$1" ds="$2" lrl="$3" lrv="$4" lrb="$5"; shift 5
    vglaw_data_args "$ds"
    local VG_NPROC VG_BS VG_ACCUM VGLAW_BATCH_ARGS
    vglaw_batch
    local extra=() resume=()
    if [[ "$VGLAW_COMPAT" == "1" ]]; then extra+=(--official_compat --compat_constant_lr); fi
    mapfile -t resume < <(vg_resume_args "$out" checkpoint.pth)
    vg_launch vglaw/train.py "${VGLAW_DATA[@]}" "${VGLAW_BATCH_ARGS[@]}" --law_type svd --img_size 448 \
        --vit_model vitdet_b_mrcnn --translate --use_mask --lr_scheduler step --max_epochs 20 --drop_epochs 10 \
        --log_freq 10 --lr_lang "$lrl" --lr_visual "$lrv" --lr_base "$lrb" \
        "${extra[@]+"${extra[@]}"}" "$@" --output_dir "$out" "${resume[@]+"${resume[@]}"}"
}

# vglaw_eval OUT_DIR CKPT DATASET: the official splits of DATASET (REC Prec@0.5, RES mIoU / oIoU / Pr@X at
# original resolution, plus the official padded-canvas numbers).
vglaw_eval() {
    local out="$1" ckpt="$2" ds="$3"
    vglaw_data_args "$ds"
    local extra=() sets
    if [[ "$VGLAW_COMPAT" == "1" ]]; then extra+=(--official_compat); fi
    sets=$(vglaw_eval_sets "$ds")
    # shellcheck disable=SC2086
    vg_launch vglaw/eval.py "${VGLAW_DATA[@]}" --batch_size "$VGLAW_BS" --pretrained_path "$ckpt" \
        --canvas_metrics "${extra[@]+"${extra[@]}"}" --eval_sets $sets --output_dir "$out"
}

# vglaw_row DATASET ROOT: a README row.
#   stage1 (the README's generic command): ViTDet + BERT -> ROOT/stage1, lr 1e-5 / 1e-5 / 1e-4 (lang / visual /
#          base);
#   stage2 (the released scripts/train_<dataset>.sh, continuations of the authors' earlier runs): from
#          ROOT/stage1/best_checkpoint.pth -> ROOT/stage2, lr 1e-6 / 1e-6 / 1e-5 (RefCOCO+: 1e-5 / 1e-5 / 1e-4);
#   eval: ROOT/stage2/best_checkpoint.pth on the official splits.
vglaw_row() {
    local ds="$1" root="$2"
    vg_section "VG-LAW ViT-B multi-task $ds, stage 1 (from ViTDet + BERT)"
    if vglaw_want stage1; then
        vg_need_file "$VITDET_CKPT" "ViTDet checkpoint"
        vg_need_file "$BERT_DIR/vocab.txt" "BERT vocabulary"
        vglaw_train "$root/stage1" "$ds" 1e-5 1e-5 1e-4 --vit_model_path "$VITDET_CKPT"
    fi
    vg_section "VG-LAW ViT-B multi-task $ds, stage 2 (the released script's continuation)"
    if vglaw_want stage2; then
        local lrs=(1e-6 1e-6 1e-5)
        if [[ "$ds" == refcoco+ ]]; then lrs=(1e-5 1e-5 1e-4); fi
        vglaw_train "$root/stage2" "$ds" "${lrs[@]}" --pretrained_path "$root/stage1/best_checkpoint.pth"
    fi
    if vglaw_want eval; then
        vg_section "VG-LAW ViT-B multi-task $ds, evaluation"
        vglaw_eval "$root/stage2" "$root/stage2/best_checkpoint.pth" "$ds"
    fi
}
