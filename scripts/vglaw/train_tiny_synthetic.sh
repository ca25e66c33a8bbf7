#!/usr/bin/env bash
# VG-LAW's tiny preset on the built-in synthetic data, on the CPU (no downloads), multi-task (boxes and masks):
#   1. synthetic data (refer layout with polygon masks, JPEG) with the larger shapes of the other quickstarts;
#   2. vglaw/pretrain_tiny.py on scenes of another seed, the stand-in for ViTDet and BERT: the tiny ViT on
#      per-patch kind / colour / row / col tags, the tiny BERT on what an expression says ([CLS]);
#   3. vglaw/train.py --preset tiny (svd language-adaptive weights, both heads, the official four losses) from
#      those towers, batch 16, no warm-up, one x0.1 drop before the last epoch;
#   4. vglaw/eval.py on val (REC Prec@0.5, RES mIoU / oIoU) and the trivial / noun-only baselines.
# Figures and wall time: vglaw/README.md, "Tiny preset" (also the header of tests/test_vglaw_learning.py).
# Usage: bash scripts/vglaw/train_tiny_synthetic.sh [--dry-run] [TRAIN_FLAGS...]
#   TRAIN_FLAGS (arguments after the options) go to vglaw/train.py (e.g. --amp bf16, --compile, --grad_ckpt);
#   EVAL_FLAGS (env) to vglaw/eval.py.
#   env: OUT (./outputs/vglaw_tiny), EPOCHS (see below), NUM_TRAIN (6000), PRETRAIN_STEPS, TEXT_STEPS, LAW (svd |
#        la | od1 | od2 | od3), QS_DEVICE (cpu), NPROC (1: one process on every core, plain `python vglaw/train.py`;
#        N > 1: torch.distributed.launch, gloo on the CPU, the global batch stays 16), LOADER_WORKERS (0),
#        OMP_NUM_THREADS (1: the tiny steps are small matmuls; with two threads per process on a machine shared
#        with other jobs the threads spin-waited and the tag pretraining ran 4x slower)
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
vg_init "$@"
OUT=${OUT:-./outputs/vglaw_tiny}
EPOCHS=${EPOCHS:-8}
NUM_TRAIN=${NUM_TRAIN:-6000}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
TEXT_STEPS=${TEXT_STEPS:-400}
LAW=${LAW:-svd}
QS_DEVICE=${QS_DEVICE:-cpu}
NPROC=${NPROC:-1}
LOADER_WORKERS=${LOADER_WORKERS:-0}
DATA=$OUT/data
PRE=$OUT/pretrained
SCENE=(--object-scale 1.8 --max-objects 5)
COMMON=(--preset tiny --dataset refcoco --split_root "$DATA/refer" --image_root "$DATA/images"
        --bert_model "$PRE/bert" --device "$QS_DEVICE" --num_workers "$LOADER_WORKERS")

run "$PYTHON" -m vgcore.synthetic --out "$DATA" --num-train "$NUM_TRAIN" --num-val 500 --num-test 250 --seed 0 \
    --formats refer --image-format jpg "${SCENE[@]}"
run "$PYTHON" vglaw/pretrain_tiny.py --bert_model "$DATA/tokenizers" --out_dir "$PRE" --steps "$PRETRAIN_STEPS" \
    --text_steps "$TEXT_STEPS" "${SCENE[@]}" --device "$QS_DEVICE"
if [ "$NPROC" -gt 1 ]; then
    NGPU=$NPROC TRAIN=(vg_launch)  # lib.sh: torch.distributed.launch --nproc_per_node=$NGPU --use_env
else
    TRAIN=(run "$PYTHON")
fi
"${TRAIN[@]}" vglaw/train.py "${COMMON[@]}" --vit_model_path "$PRE/vit_tiny.pth" --law_type "$LAW" \
    --output_dir "$OUT/run" --tensorboard false --batch_size "$((16 / NPROC))" --batch_sum 16 --warmup_steps 0 \
    --lr_base 1e-3 --lr_visual 3e-4 --lr_lang 3e-4 --max_epochs "$EPOCHS" \
    --drop_epochs "$((EPOCHS > 1 ? EPOCHS - 1 : 1))" --log_freq 100 --overwrite \
    "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
read -r -a EVAL_EXTRA <<< "${EVAL_FLAGS:-}"
run "$PYTHON" vglaw/eval.py "${COMMON[@]}" --pretrained_path "$OUT/run/best_checkpoint.pth" --eval_sets val \
    --output_dir "$OUT/run" --canvas_metrics --vis 8 "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}"
run "$PYTHON" scripts/baselines.py --data "$DATA" --split val --format refer \
    --metrics "$OUT/run/eval_refcoco_val.json" --key "rec/acc@0.5" --out "$OUT/rec_vs_baselines.json"
