#!/usr/bin/env bash
# ALVG's tiny preset on the built-in synthetic data, on the CPU (no downloads):
#   1. synthetic data (SeqTR layout with masks, JPEG, plus the gRefCOCO-style split), the quickstart's larger
#      shapes;
#   2. simvg/pretrain_tiny.py on scenes of another seed: SimVG's tag-pretrained tiny BEiT-3, the stand-in for the
#      BEiT-3 weights ALVG starts from (skipped when $OUT/tiny_beit3.pth exists);
#   3. alvg/train.py --backbone tiny (official loss structure: Hungarian detection loss on every decoder layer,
#      mask focal + dice, TIE score-map and decoder-attention losses at the official weights 40 / 1) over that
#      backbone at lr x0.2 (official x0.1), lr 5e-4, batch 16, no warm-up, one x0.1 decay before the last epoch;
#   4. alvg/eval.py on val and the trivial / noun-only baselines (REC), or the GREC baselines (always no-target,
#      one box) with the GREC metric code.
# Measured figures: alvg/README.md, "Tiny preset".
# Variants: DATASET=grefcoco (10 queries, gRefCOCO-style split; attention losses off as the official gRefCOCO
# config), MASKS=off (box-only: box attention targets, no
# mask loss), ATTN=0 (both attention losses off: the ablation).
# Usage: bash scripts/alvg/train_tiny_synthetic.sh [--dry-run] [TRAIN_FLAGS...]
#   TRAIN_FLAGS (arguments after the options) go to alvg/train.py (e.g. --amp bf16, --compile, --grad_ckpt);
#   EVAL_FLAGS (env) to alvg/eval.py.
#   env: OUT (./outputs/alvg_tiny), EPOCHS (12), NUM_TRAIN (6000), PRETRAIN_STEPS (3000), TEXT_STEPS (400),
#        JOINT_STEPS (2000), VIS_MULT (0.2), DATASET (refcoco | grefcoco), MASKS (auto | off), ATTN (1 | 0),
#        SEED (6666), QS_DEVICE (cpu), NPROC (training processes, 1: one process on every core; N > 1: gloo on
#        the CPU, one thread each, the global batch stays 16), LOADER_WORKERS (0), OMP_NUM_THREADS (unset: one
#        thread per core; set it to 1 on a machine other jobs load -- two threads competing with other processes
#        for 2 cores made the training step about 8x slower, one thread kept ~150 img/s)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
vg_init "$@"
OUT=${OUT:-./outputs/alvg_tiny}
EPOCHS=${EPOCHS:-12}
NUM_TRAIN=${NUM_TRAIN:-6000}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
TEXT_STEPS=${TEXT_STEPS:-400}
JOINT_STEPS=${JOINT_STEPS:-2000}
VIS_MULT=${VIS_MULT:-0.2}
DATASET=${DATASET:-refcoco}
MASKS=${MASKS:-auto}
ATTN=${ATTN:-1}
SEED=${SEED:-6666}
QS_DEVICE=${QS_DEVICE:-cpu}
NPROC=${NPROC:-1}
LOADER_WORKERS=${LOADER_WORKERS:-0}
vg_check_choice DATASET "$DATASET" refcoco grefcoco
vg_check_choice MASKS "$MASKS" auto off
vg_check_choice ATTN "$ATTN" 0 1
DATA=$OUT/data
SCENE=(--object-scale 1.8 --max-objects 5)
RUN_NAME="$DATASET"
if [[ "$MASKS" == off ]]; then RUN_NAME+="_boxonly"; fi
if [[ "$ATTN" == 0 ]]; then RUN_NAME+="_noattn"; fi
COMMON=(--dataset "$DATASET" --backbone tiny --data_root "$DATA/seqtr" --image_root "$DATA/images"
        --beit3_spm "$DATA/tokenizers/spm.model" --device "$QS_DEVICE" --num_workers "$LOADER_WORKERS" --masks "$MASKS")
EXTRA=()
if [[ "$ATTN" == 0 ]]; then EXTRA+=(--no_attn_loss); fi

if [[ ! -f "$DATA/meta.json" ]] || vg_is_dry; then
    run "$PYTHON" -m vgcore.synthetic.scenes --out "$DATA" --num-train "$NUM_TRAIN" --num-val 500 --num-test 250 \
        --seed 0 --formats seqtr --grec --image-format jpg "${SCENE[@]}"
fi
if [[ ! -f "$OUT/tiny_beit3.pth" ]] || vg_is_dry; then
    run "$PYTHON" simvg/pretrain_tiny.py --beit3_spm "$DATA/tokenizers/spm.model" --out "$OUT/tiny_beit3.pth" \
        --steps "$PRETRAIN_STEPS" --text_steps "$TEXT_STEPS" --joint_steps "$JOINT_STEPS" "${SCENE[@]}" \
        --device "$QS_DEVICE" --log_every 500
fi
NGPU=$NPROC  # lib.sh's vg_launch: torch.distributed.launch --nproc_per_node=$NPROC --use_env (gloo on the CPU)
vg_launch alvg/train.py "${COMMON[@]}" --beit3_ckpt "$OUT/tiny_beit3.pth" --output_dir "$OUT/$RUN_NAME" \
    --tensorboard 0 --seed "$SEED" --epochs "$EPOCHS" --batch_size "$((16 / NPROC))" --lr 5e-4 \
    --lr_vis_enc_mult "$VIS_MULT" --warmup_epochs 0 --decay_steps "$((EPOCHS > 1 ? EPOCHS - 1 : 1))" \
    --start_evaluate_epoch 0 --evaluate_interval 1 --log_every 100 --overwrite "${EXTRA[@]+"${EXTRA[@]}"}" \
    "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
read -r -a EVAL_EXTRA <<< "${EVAL_FLAGS:-}"
run "$PYTHON" alvg/eval.py "${COMMON[@]}" --load_from "$OUT/$RUN_NAME/det_best.pth" --eval_sets val \
    --output_dir "$OUT/$RUN_NAME" "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}"
GREC_FLAG=()
if [ "$DATASET" == grefcoco ]; then GREC_FLAG=(--grec); fi
run "$PYTHON" scripts/baselines.py --data "$DATA" --split val --format seqtr "${GREC_FLAG[@]+"${GREC_FLAG[@]}"}" \
    --metrics "$OUT/$RUN_NAME/eval_${DATASET}_val.json" --out "$OUT/$RUN_NAME/vs_baselines.json"
