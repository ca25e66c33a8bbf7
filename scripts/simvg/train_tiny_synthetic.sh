#!/usr/bin/env bash
# SimVG's tiny preset on the built-in synthetic data, on the CPU (no downloads): the learning run of
# tests/test_simvg_learning.py as one command.
#   1. synthetic data (SeqTR layout, JPEG, plus the gRefCOCO-style split) with the quickstart's larger shapes;
#   2. simvg/pretrain_tiny.py on scenes of another seed, the stand-in for the BEiT-3 weights SimVG starts from:
#      the tiny BEiT-3 on kind / colour / row / col patch tags, on what the expressions say, then (attention and
#      object token only) the object token says what the paired expression says and what its referent is;
#   3. simvg/train.py --preset onestage (DB + DWBD token branch, official losses) over that backbone at x0.2
#      (official x0.1), lr 5e-4, batch 16, no LSJ, no warm-up, one x0.1 decay before the last epoch;
#   4. simvg/eval.py on val (DB and TB Acc@0.5) and the trivial / noun-only baselines.
# Measured alone on 2 cores: see simvg/README.md, "Quickstart" (figures also in the header of
# tests/test_simvg_learning.py).  JOINT_STEPS=0 drops the joint phase (the TB then stays at a third of the DB).
# gRefCOCO-style: DATASET=grefcoco (10 queries).
# Usage: bash scripts/simvg/train_tiny_synthetic.sh [--dry-run] [TRAIN_FLAGS...]
#   TRAIN_FLAGS go to simvg/train.py (e.g. --amp bf16, --compile, --grad_ckpt); EVAL_FLAGS (env) to simvg/eval.py.
#   env: OUT (./outputs/simvg_tiny), EPOCHS (12), NUM_TRAIN (6000), PRETRAIN_STEPS (3000), TEXT_STEPS (400),
#        JOINT_STEPS (2000), VIS_MULT (0.2), DATASET (refcoco | grefcoco), QS_DEVICE (cpu), NPROC (1: one process on
#        every core, plain `python simvg/train.py`; N > 1: torch.distributed.launch, gloo on the CPU, one thread
#        each, the global batch stays 16), LOADER_WORKERS (0: the model's process decodes the 128-px JPEGs)
# Speed on the 2-core machine (one grounding epoch, 375 steps of 16): NPROC=1 LOADER_WORKERS=0 35 s, NPROC=2 42 s
# (LOADER_WORKERS=1: 47 s); a loader worker or a second process costs more in contention than it hides.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
vg_init "$@"
OUT=${OUT:-./outputs/simvg_tiny}
EPOCHS=${EPOCHS:-12}
NUM_TRAIN=${NUM_TRAIN:-6000}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
TEXT_STEPS=${TEXT_STEPS:-400}
JOINT_STEPS=${JOINT_STEPS:-2000}
VIS_MULT=${VIS_MULT:-0.2}
DATASET=${DATASET:-refcoco}
QS_DEVICE=${QS_DEVICE:-cpu}
NPROC=${NPROC:-1}
LOADER_WORKERS=${LOADER_WORKERS:-0}
DATA=$OUT/data
SCENE=(--object-scale 1.8 --max-objects 5)
COMMON=(--preset onestage --dataset "$DATASET" --backbone tiny --data_root "$DATA/seqtr" --image_root "$DATA/images"
        --beit3_spm "$DATA/tokenizers/spm.model" --device "$QS_DEVICE" --num_workers "$LOADER_WORKERS")

run "$PYTHON" -m vgcore.synthetic.scenes --out "$DATA" --num-train "$NUM_TRAIN" --num-val 500 --num-test 250 --seed 0 \
    --formats seqtr --grec --image-format jpg "${SCENE[@]}"
run "$PYTHON" simvg/pretrain_tiny.py --beit3_spm "$DATA/tokenizers/spm.model" --out "$OUT/tiny_beit3.pth" \
    --steps "$PRETRAIN_STEPS" --text_steps "$TEXT_STEPS" --joint_steps "$JOINT_STEPS" "${SCENE[@]}" --device "$QS_DEVICE" --log_every 500
if [ "$NPROC" -gt 1 ]; then
    NGPU=$NPROC TRAIN=(vg_launch)  # lib.sh: torch.distributed.launch --nproc_per_node=$NGPU --use_env
else
    TRAIN=(run "$PYTHON")
fi
"${TRAIN[@]}" simvg/train.py "${COMMON[@]}" --beit3_ckpt "$OUT/tiny_beit3.pth" --output_dir "$OUT/$DATASET" --tensorboard 0 \
    --epochs "$EPOCHS" --batch_size "$((16 / NPROC))" --lr 5e-4 --lr_vis_enc_mult "$VIS_MULT" --warmup_epochs 0 \
    --decay_steps "$((EPOCHS > 1 ? EPOCHS - 1 : 1))" --no_lsj --start_evaluate_epoch 0 --evaluate_interval 1 --log_every 100 --overwrite \
    "${VG_ARGS[@]+"${VG_ARGS[@]}"}"
read -r -a EVAL_EXTRA <<< "${EVAL_FLAGS:-}"
run "$PYTHON" simvg/eval.py "${COMMON[@]}" --load_from "$OUT/$DATASET/det_best.pth" --eval_sets val \
    --output_dir "$OUT/$DATASET" "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}"
if [ "$DATASET" != grefcoco ]; then
    for branch in decoder token; do
        run "$PYTHON" scripts/baselines.py --data "$DATA" --split val --format seqtr \
            --metrics "$OUT/$DATASET/eval_${DATASET}_val.json" --key "$branch/acc@0.5" --out "$OUT/${branch}_vs_baselines.json"
    done
fi
