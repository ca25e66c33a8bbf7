#!/usr/bin/env bash
# ResVG helpers shared by scripts/resvg/*.sh. Source after scripts/lib.sh and vg_init; never run directly.
#
# Environment (defaults relative to the repository root; the official layout is ./data + ./ln_data):
#   RESVG_SPLIT_ROOT  <dataset>/<dataset>_<split>.pth split lists and <split>_fea.pth prior features
#                     (the official data package)                          default $DATA_ROOT
#   RESVG_PRIOR_ROOT  prior features elsewhere: <root>/<dataset>/<split>_fea.pth   default: next to the lists
#   LN_DATA           images: images/train2014, referit/ReferIt, flickr/flickr      default ./ln_data
#   DETR_DIR          TransVG's DETR-R50 files detr-r50-{unc,gref,referit}.pth      default ./checkpoints/detr
#   BERT_DIR          bert-base-uncased folder (pytorch_model.bin or model.safetensors, vocab.txt)
#                                                                                  default ./checkpoints/bert-base-uncased
#   RESVG_TRAIN_SPLIT training split list (official: new_train = real + relation-augmented samples)
#   RESVG_EXTRA_SPLITS split lists appended to it (--extra_train_splits), e.g. "new_train" with
#                     RESVG_TRAIN_SPLIT=train when the augmented list holds only the added samples
#   EVAL_CKPT         checkpoint of the run that is evaluated: best_checkpoint.pth (best val Acc@0.5, default)
#                     or checkpoint.pth (the last epoch, what the official train.py leaves)
#   STAGES            phases to run ("train eval"; default both)
#
# The official recipe (every configs/ResVG_R50_<dataset>.py: batch 16 per GPU on 4 GPUs, 90 epochs, lr drop at
# 60, the four encoders frozen for 10 epochs, AdamW lr 1e-4 / 1e-5) is resvg/train.py's flag defaults; the
# scripts pass the dataset, the paths and the DETR file the configs name.

RESVG_DATASETS=(unc unc+ gref gref_umd referit flickr)
# README command: CUDA_VISIBLE_DEVICES=0,1,2,3 ... --nproc_per_node=4, batch_size=16 per GPU in every config
RESVG_OFFICIAL_GPUS=4
RESVG_OFFICIAL_BATCH=16
# test.py --batch_size_test 32 in the README evaluation command
RESVG_EVAL_BATCH=32

resvg_paths() {
    RESVG_SPLIT_ROOT="${RESVG_SPLIT_ROOT:-$DATA_ROOT}"
    RESVG_PRIOR_ROOT="${RESVG_PRIOR_ROOT:-}"
    LN_DATA="${LN_DATA:-./ln_data}"
    DETR_DIR="${DETR_DIR:-./checkpoints/detr}"
    BERT_DIR="${BERT_DIR:-./checkpoints/bert-base-uncased}"
    RESVG_TRAIN_SPLIT="${RESVG_TRAIN_SPLIT:-new_train}"
    RESVG_EXTRA_SPLITS="${RESVG_EXTRA_SPLITS:-}"
    EVAL_CKPT="${EVAL_CKPT:-best_checkpoint.pth}"
    STAGES="${STAGES:-}"
}

resvg_want() {
    [[ -z "$STAGES" ]] && return 0
    local s
    for s in $STAGES; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

# resvg_eval_sets DATASET: the splits the README reports for that dataset.
resvg_eval_sets() {
    case "$1" in
        unc|unc+) echo "val testA testB" ;;
        gref) echo "val" ;;
        gref_umd) echo "val test" ;;
        referit|flickr) echo "test" ;;
        *) echo "error: no eval splits known for dataset $1" >&2; return 2 ;;
    esac
}

# resvg_detr DATASET: the DETR-R50 file of the official config (COCO-trained without the REC test images):
# unc for unc / unc+, gref for gref / gref_umd, referit for referit / flickr.
resvg_detr() {
    case "$1" in
        unc|unc+) echo "$DETR_DIR/detr-r50-unc.pth" ;;
        gref|gref_umd) echo "$DETR_DIR/detr-r50-gref.pth" ;;
        referit|flickr) echo "$DETR_DIR/detr-r50-referit.pth" ;;
        *) echo "error: no DETR checkpoint known for dataset $1" >&2; return 2 ;;
    esac
}

# Flags shared by train and eval commands (RESVG_COMMON).
resvg_common_args() {
    local ds="$1"
    RESVG_COMMON=(--dataset "$ds" --split_root "$RESVG_SPLIT_ROOT" --data_root "$LN_DATA"
                  --bert_token_mode "$BERT_DIR" --device "$DEVICE" --num_workers "$NUM_WORKERS")
    if [[ -n "$RESVG_PRIOR_ROOT" ]]; then RESVG_COMMON+=(--prior_root "$RESVG_PRIOR_ROOT/$ds"); fi
}

# resvg_train OUT_DIR DATASET ARGS...: one training run with the official recipe (the flag defaults); the
# official global batch 4 x 16 is kept on NGPU x NNODES GPUs (vg_batch). Validation on val after each epoch.
resvg_train() {
    local out="$1" ds="$2"; shift 2
    resvg_common_args "$ds"
    local detr; detr=$(resvg_detr "$ds")
    vg_need_file "$detr" "DETR-R50 checkpoint"
    local VG_NPROC VG_BS VG_ACCUM VG_BATCH_ARGS
    vg_batch "$RESVG_OFFICIAL_GPUS" "$RESVG_OFFICIAL_BATCH"
    local extra=() resume=()
    # shellcheck disable=SC2206
    if [[ -n "$RESVG_EXTRA_SPLITS" ]]; then extra=(--extra_train_splits $RESVG_EXTRA_SPLITS); fi
    mapfile -t resume < <(vg_resume_args "$out" checkpoint.pth)
    vg_launch resvg/train.py "${RESVG_COMMON[@]}" --train_split "$RESVG_TRAIN_SPLIT" \
        "${extra[@]+"${extra[@]}"}" --val_split val --load_weights_path "$detr" --bert_model "$BERT_DIR" \
        "${VG_BATCH_ARGS[@]}" "$@" --output_dir "$out" "${resume[@]+"${resume[@]}"}"
}

# resvg_eval OUT_DIR CKPT DATASET ARGS...: CKPT on every reported split of DATASET (dataset-level Acc@0.5 with
# the strict IoU > 0.5 rule, every sample counted once), batch 32 per process as the README command.
resvg_eval() {
    local out="$1" ckpt="$2" ds="$3"; shift 3
    resvg_common_args "$ds"
    local sets; sets=$(resvg_eval_sets "$ds")
    # shellcheck disable=SC2086
    vg_launch resvg/eval.py "${RESVG_COMMON[@]}" --batch_size "$RESVG_EVAL_BATCH" "$@" \
        --checkpoint "$ckpt" --eval_sets $sets --output_dir "$out"
}

# resvg_row DATASET ROOT: the README row's recipe for one dataset: train into ROOT, evaluate ROOT/$EVAL_CKPT.
resvg_row() {
    local ds="$1" root="$2"
    vg_check_choice dataset "$ds" "${RESVG_DATASETS[@]}"
    vg_section "ResVG-R50 $ds: training (train split $RESVG_TRAIN_SPLIT${RESVG_EXTRA_SPLITS:+ + $RESVG_EXTRA_SPLITS})"
    if resvg_want train; then resvg_train "$root" "$ds"; fi
    vg_section "ResVG-R50 $ds: evaluation ($(resvg_eval_sets "$ds"))"
    if resvg_want eval; then resvg_eval "$root" "$root/$EVAL_CKPT" "$ds"; fi
}
