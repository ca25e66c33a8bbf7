#!/usr/bin/env bash
# ResVG's tiny preset on the built-in synthetic data, on the CPU (no downloads):
#   1. synthetic data (TransVG split lists, JPEG) with the quickstart's larger shapes;
#   2. resvg/pretrain_tiny.py on scenes and expressions of another seed, the stand-in for the DETR-R50 and
#      bert-base weights ResVG starts from: the tiny ResNet + input_proj + visual encoder on per-cell kind /
#      colour / size / row / col tags, the tiny BERT on what the expressions say; written in DETR's and BERT's
#      layouts and loaded by train.py through --load_weights_path / --bert_model like the real files;
#   3. resvg/train.py --model_preset tiny: the official losses, parameter groups, freeze schedule and StepLR,
#      with a short schedule (see resvg/README.md, "Tiny preset");
#   4. resvg/eval.py on val with the accuracy per expression type (--breakdown expr_type: attr / extreme /
#      ordinal / rel), and the trivial / noun-only baselines (scripts/baselines.py).
# Measured on the 2-core machine: see resvg/README.md, "Tiny preset".
#
# Relation-sensitive augmentation: the `aug` stage pastes instances of one category (cut out of the train scenes
# with their masks, refer/refcoco/instances.json) into free space of AUG_IMAGES train scenes, whose own objects
# stay and count (--background scene), and writes pseudo-queries with the relations the tiny vocabulary spells
# (left, right, top, bottom, second, third; AUG_FLAGS replaces these flags) as the split list
# $DATA/split/data/unc/unc_<AUG_SPLIT>.pth; the training stage then reads train + that list
# (--extra_train_splits, with its <AUG_SPLIT>_fea.pth when priors are used). The `control` stage writes
# <AUG_SPLIT>_control, as many train rows drawn at random as <AUG_SPLIT> holds, and the training stage reads
# train + that list instead: the same number of steps with real samples only. FROM=<checkpoint> fine-tunes a
# trained tiny ResVG (EPOCHS 3, no freeze, a tenth of the learning rates), so both arms start from the same
# model. The comparison of resvg/README.md ("Relation-sensitive augmentation on the tiny preset"), on a train
# split without same-category position expressions (TRAIN_TYPES=attr,rel), per expression type:
#   export OUT=./outputs/resvg_relpoor TRAIN_TYPES=attr,rel EVAL_FLAGS="--eval_sets val testA testB"
#   bash scripts/resvg/train_tiny_synthetic.sh                                              # base -> $OUT/unc
#   STAGES=aug AUG_SPLIT=new_train bash scripts/resvg/train_tiny_synthetic.sh
#   FROM=$OUT/unc/best_checkpoint.pth STAGES="train eval" AUG_SPLIT=new_train RUN=ft_aug \
#       bash scripts/resvg/train_tiny_synthetic.sh
#   FROM=$OUT/unc/best_checkpoint.pth STAGES="control train eval" AUG_SPLIT=new_train RUN=ft_control \
#       bash scripts/resvg/train_tiny_synthetic.sh
#   python scripts/resvg/compare_aug.py $OUT/ft_control $OUT/ft_aug
# Prior features: PRIOR_ROOT=DIR reads DIR/<split>_fea.pth (32-d rows for the tiny preset); without it every
# prior row is zero (--prior_missing zeros: the content query is the prior MLP of a zero vector).
#
# Usage: bash scripts/resvg/train_tiny_synthetic.sh [--dry-run] [TRAIN_FLAGS...]
#   TRAIN_FLAGS (arguments after the options) go to resvg/train.py (e.g. --amp bf16, --compile, --grad_ckpt);
#   EVAL_FLAGS (env) to resvg/eval.py.
#   env: OUT (./outputs/resvg_tiny), RUN (unc: the run folder below OUT), STAGES (data pretrain train eval; aug, control),
#        EPOCHS (8; 3 with FROM), NUM_TRAIN (6000), TRAIN_TYPES (all; e.g. attr,rel), PRETRAIN_STEPS (1500),
#        TEXT_STEPS (600), TRAIN_SPLIT (train), FROM, AUG_SPLIT, AUG_IMAGES (400), AUG_FLAGS ("--background
#        scene --relations left,right,top,bottom,second,third"; e.g. "--background blur" for all relations),
#        PRIOR_ROOT, SEED (42), QS_DEVICE (cpu), NPROC (2: torch.distributed.launch, gloo on the CPU, one process
#        per core, the global batch stays 16; 1: plain `python resvg/train.py`), LOADER_WORKERS (0: the model's
#        process decodes the 128-px JPEGs), OMP_NUM_THREADS (1 for every step: the tiny model's ops are small, and
#        two threads per process are several times slower as soon as other work shares the cores)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
vg_init "$@"
OUT=${OUT:-./outputs/resvg_tiny}
RUN=${RUN:-unc}
STAGES=${STAGES:-data pretrain train eval}
FROM=${FROM:-}
if [ -n "$FROM" ]; then EPOCHS=${EPOCHS:-3}; else EPOCHS=${EPOCHS:-8}; fi
NUM_TRAIN=${NUM_TRAIN:-6000}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1500}
TEXT_STEPS=${TEXT_STEPS:-600}
TRAIN_SPLIT=${TRAIN_SPLIT:-train}
AUG_SPLIT=${AUG_SPLIT:-}
AUG_IMAGES=${AUG_IMAGES:-400}
read -r -a EVAL_EXTRA <<< "${EVAL_FLAGS:-}"
read -r -a AUG_EXTRA <<< "${AUG_FLAGS:---background scene --relations left,right,top,bottom,second,third}"
PRIOR_ROOT=${PRIOR_ROOT:-}
SEED=${SEED:-42}
QS_DEVICE=${QS_DEVICE:-cpu}
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LOADER_WORKERS=${LOADER_WORKERS:-0}
DATA=$OUT/data
PRE=$OUT/pretrained
SCENE=(--object-scale 1.8 --max-objects 5)
want() { [[ " $STAGES " == *" $1 "* ]]; }

COMMON=(--model_preset tiny --dataset unc --split_root "$DATA/split/data" --image_root "$DATA/images"
        --bert_token_mode "$DATA/tokenizers/vocab.txt" --device "$QS_DEVICE" --num_workers "$LOADER_WORKERS"
        --breakdown expr_type)
if [ -n "$PRIOR_ROOT" ]; then COMMON+=(--prior_root "$PRIOR_ROOT"); else COMMON+=(--prior_missing zeros); fi
EXTRA=()
if want control; then
    EXTRA=(--extra_train_splits "${AUG_SPLIT:?the control stage needs AUG_SPLIT (the list it matches)}_control")
elif [ -n "$AUG_SPLIT" ]; then
    EXTRA=(--extra_train_splits "$AUG_SPLIT")
fi

if want data; then
    run "$PYTHON" -m vgcore.synthetic --out "$DATA" --num-train "$NUM_TRAIN" --num-val 500 --num-test 250 --seed 0 \
        --formats transvg,refer --image-format jpg "${SCENE[@]}" ${TRAIN_TYPES:+--train-types "$TRAIN_TYPES"}
fi
if want aug; then
    if [ -z "$AUG_SPLIT" ]; then echo "the aug stage writes the split AUG_SPLIT: set it (e.g. AUG_SPLIT=new_train)" >&2; exit 2; fi
    run "$PYTHON" -m resvg.relation_aug --dataset unc --split_root "$DATA/split/data" --image_root "$DATA/images" \
        --instances "$DATA/refer/refcoco/instances.json" --no_base --out_split "$AUG_SPLIT" \
        --num_images "$AUG_IMAGES" --seed 0 --overwrite "${AUG_EXTRA[@]+"${AUG_EXTRA[@]}"}"
fi
if want control; then
    run "$PYTHON" -m resvg.relation_aug --dataset unc --split_root "$DATA/split/data" --image_root "$DATA/images" \
        --control_like "$AUG_SPLIT" --out_split "${AUG_SPLIT}_control" --seed 0 --overwrite
fi
if want pretrain; then
    run "$PYTHON" resvg/pretrain_tiny.py --vocab "$DATA/tokenizers/vocab.txt" --out_dir "$PRE" --steps "$PRETRAIN_STEPS" \
        --text_steps "$TEXT_STEPS" "${SCENE[@]}" --seed "$SEED" --device "$QS_DEVICE" --log_every 500
fi
if [ "$NPROC" -gt 1 ]; then
    NGPU=$NPROC TRAIN=(vg_launch)  # lib.sh: torch.distributed.launch --nproc_per_node=$NGPU --use_env
else
    TRAIN=(run "$PYTHON")
fi
if [ -n "$FROM" ]; then  # fine-tuning a whole tiny ResVG: no freeze, a tenth of the learning rates
    START=(--load_weights_path "$FROM" --lr 1e-4 --lr_backbone 1e-5 --lr_vis_enc 1e-5 --lr_bert 1e-5 --freeze_epochs 0)
else
    START=(--load_weights_path "$PRE/detr_tiny.pth" --bert_model "$PRE/bert_tiny.pth"
           --lr 5e-4 --lr_backbone 5e-5 --lr_vis_enc 5e-5 --lr_bert 5e-5 --freeze_epochs 1)
fi
if want train; then
    "${TRAIN[@]}" resvg/train.py "${COMMON[@]}" --train_split "$TRAIN_SPLIT" "${EXTRA[@]+"${EXTRA[@]}"}" \
        "${START[@]}" --seed "$SEED" --batch_size "$((16 / NPROC))" --epochs "$EPOCHS" \
        --lr_drop "$((EPOCHS > 1 ? EPOCHS - 1 : 1))" --log_every 125 --tensorboard false \
        --output_dir "$OUT/$RUN" --overwrite "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
fi
if want eval; then
    run "$PYTHON" resvg/eval.py "${COMMON[@]}" --checkpoint "$OUT/$RUN/best_checkpoint.pth" --eval_sets val \
        --output_dir "$OUT/$RUN" "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}"
    run "$PYTHON" scripts/baselines.py --data "$DATA" --split val --metrics "$OUT/$RUN/eval_unc_val.json" \
        --out "$OUT/$RUN/vs_baselines.json"
fi
