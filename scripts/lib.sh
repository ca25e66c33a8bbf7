#!/usr/bin/env bash
# Shared helpers for the reproduction scripts. Source it, never run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"     # from scripts/<method>/x.sh
#   vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"   # handles --dry-run, cds to the repo root
#   vg_launch hivg/train.py --lr 1e-4 ...                  # N-GPU launch (printed, or printed and run)
#   local VG_NPROC VG_BS VG_ACCUM VG_BATCH_ARGS; vg_batch 7 80   # official 7 GPUs x 80: processes, per-GPU
#   vg_launch hivg/train.py "${VG_BATCH_ARGS[@]}" ...      # batch and accumulation for NGPU x NNODES GPUs
#
# Conventions
# - Dry run: `DRY_RUN=1 bash scripts/x.sh` or `bash scripts/x.sh --dry-run ...` prints every command,
#   one per line, prefixed with "+ " and shell-quoted so it can be copy-pasted, and runs nothing.
# - All paths come from environment variables with defaults relative to the repository root
#   (never absolute): DATA_ROOT, OUT_ROOT, CLIP_DIR, BEIT3_DIR, ... (see vg_default_paths).
# - NGPU (GPUs per machine), MASTER_PORT, PYTHON can be overridden; each script sets its own NGPU
#   default to the official GPU count. Several machines: NNODES (default 1), NODE_RANK (0..NNODES-1),
#   MASTER_ADDR (the rank-0 machine); the launch then goes through torchrun.
# - The official global batch (official GPUs x official per-GPU batch) and learning rate are kept whatever
#   the GPU count: vg_batch picks the per-GPU batch and the gradient accumulation and prints them.
# - RESUME=1 makes the method helpers pass --resume <run>/<latest checkpoint> when one exists.
# - Memory allocator (vg_allocator_env, run by vg_init): glibc serves every block above its mmap threshold
#   (at most 32 MiB: most activations of a training step) with a fresh mmap that page-faults on first touch
#   and is unmapped again on free, every step -- up to 40 % system time on a CPU training step.  By default
#   (VG_MALLOC=glibc) the scripts export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64 GiB: big blocks come from
#   the heap and freed memory stays there for the next step (the process keeps its peak size).
#   VG_MALLOC=jemalloc | tcmalloc preloads that library instead (when installed; else the glibc setting, with
#   a note); VG_MALLOC=system leaves the allocator alone.  Variables already set are kept.

# Repository root = parent of this file's folder.
VG_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# vg_init "$@": parse the leading --dry-run / -n flag, export DRY_RUN, cd to the repo root, fill path
# defaults. The remaining arguments are left in the array VG_ARGS.
vg_init() {
    VG_ARGS=()
    local a
    for a in "$@"; do
        case "$a" in
            --dry-run|-n) DRY_RUN=1 ;;
            *) VG_ARGS+=("$a") ;;
        esac
    done
    DRY_RUN="${DRY_RUN:-0}"
    export DRY_RUN
    cd "$VG_REPO_ROOT"
    vg_default_paths
    vg_allocator_env
}

# vg_allocator_env: the allocator setting of the python processes (see Conventions above).
vg_allocator_env() {
    local lib=""
    case "${VG_MALLOC:-glibc}" in
        system) return 0 ;;
        jemalloc|tcmalloc)
            lib="$(ldconfig -p 2>/dev/null | awk -v n="lib${VG_MALLOC}" '$1 ~ "^"n"(_minimal)?\\.so" {print $NF; exit}')"
            if [[ -n "$lib" ]]; then
                export LD_PRELOAD="${lib}${LD_PRELOAD:+:$LD_PRELOAD}"
                return 0
            fi
            printf '# note: VG_MALLOC=%s but lib%s is not installed; using the glibc setting\n' "$VG_MALLOC" "$VG_MALLOC" ;;
        glibc) ;;
        *) printf 'error: VG_MALLOC must be glibc, jemalloc, tcmalloc or system (got %s)\n' "$VG_MALLOC" >&2; return 2 ;;
    esac
    export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}"
    export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-68719476736}"
}

# Path and launch defaults (override by exporting the variable before calling the script).
vg_default_paths() {
    PYTHON="${PYTHON:-python}"
    DATA_ROOT="${DATA_ROOT:-./data}"
    OUT_ROOT="${OUT_ROOT:-./outputs}"
    CLIP_DIR="${CLIP_DIR:-./checkpoints/clip}"
    BEIT3_DIR="${BEIT3_DIR:-./checkpoints/beit3}"
    RELEASED_DIR="${RELEASED_DIR:-./checkpoints/released}"
    MASTER_PORT="${MASTER_PORT:-29500}"
    NNODES="${NNODES:-1}"
    NODE_RANK="${NODE_RANK:-0}"
    MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
    NUM_WORKERS="${NUM_WORKERS:-4}"
    DEVICE="${DEVICE:-cuda}"
    RESUME="${RESUME:-0}"
}

vg_is_dry() { [[ "${DRY_RUN:-0}" == "1" ]]; }

# run CMD...: print the command (shell-quoted, "+ " prefix); execute it unless DRY_RUN=1.
run() {
    local quoted
    printf -v quoted '%q ' "$@"
    printf '+ %s\n' "${quoted% }"
    if ! vg_is_dry; then
        "$@"
    fi
}

# vg_launch SCRIPT ARGS...: one node: python -m torch.distributed.launch --nproc_per_node=N --use_env
# SCRIPT ARGS; NNODES > 1: python -m torch.distributed.run (torchrun) with --nnodes/--node_rank/
# --master_addr/--master_port (it always passes LOCAL_RANK in the environment). N = VG_NPROC (set by the
# caller from vg_batch for a training run) or NGPU.
vg_launch() {
    local n="${VG_NPROC:-${NGPU:-1}}"
    if [[ "${NNODES:-1}" -gt 1 ]]; then
        run "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" \
            --nproc_per_node="$n" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
            --master_port="$MASTER_PORT" "$@"
    else
        run "$PYTHON" -m torch.distributed.launch --nproc_per_node="$n" \
            --master_port="$MASTER_PORT" --use_env "$@"
    fi
}

# vg_batch OFFICIAL_GPUS OFFICIAL_PER_GPU_BATCH: keep the official global batch G = OFFICIAL_GPUS x
# OFFICIAL_PER_GPU_BATCH on the NGPU x NNODES GPUs at hand. Sets
#   VG_NPROC  processes per machine: the largest p <= NGPU with G divisible by p x NNODES (a note is
#             printed when that leaves GPUs idle);
#   VG_BS     per-GPU batch, VG_ACCUM gradient-accumulation steps: the smallest accumulation A for which
#             G / (p x NNODES) / A is a whole number no larger than the official per-GPU batch (the memory
#             the official run needed);
#   VG_BATCH_ARGS  (--batch_size VG_BS [--accum_steps VG_ACCUM]) for the training command,
# and prints "# batch: N processes x per-GPU B x accumulation A = global G (official: ...)".
vg_batch() {
    local gpus="$1" per="$2"
    local global=$((gpus * per)) nodes="${NNODES:-1}" ngpu="${NGPU:-1}" p a share
    for ((p = ngpu; p >= 1; p--)); do
        (( global % (p * nodes) == 0 )) && break
    done
    if (( p < 1 )); then
        printf 'error: the official global batch %d cannot be split over %d machines\n' "$global" "$nodes" >&2
        return 2
    fi
    if (( p < ngpu )); then
        printf '# note: global batch %d is not divisible by %d GPUs per machine x %d machines; using %d per machine\n' \
            "$global" "$ngpu" "$nodes" "$p"
    fi
    share=$((global / (p * nodes)))
    for ((a = 1; a <= share; a++)); do
        (( share % a == 0 && share / a <= per )) && break
    done
    VG_NPROC="$p"; VG_ACCUM="$a"; VG_BS=$((share / a))
    VG_BATCH_ARGS=(--batch_size "$VG_BS")
    if (( a > 1 )); then VG_BATCH_ARGS+=(--accum_steps "$a"); fi
    printf '# batch: %d processes x per-GPU %d x accumulation %d = global %d (official: %d GPUs x %d)\n' \
        "$((p * nodes))" "$VG_BS" "$a" "$global" "$gpus" "$per"
}

# vg_section TITLE: a visible separator in logs and dry-run listings.
vg_section() { printf '\n# ===== %s =====\n' "$*"; }

# vg_need_file PATH WHAT: fail (real run) or warn (dry run) if an input file is missing.
vg_need_file() {
    if [[ ! -e "$1" ]]; then
        if vg_is_dry; then
            printf '# note: %s not found: %s (ok in a dry run)\n' "$2" "$1"
        else
            printf 'error: %s not found: %s\n' "$2" "$1" >&2
            return 1
        fi
    fi
}

# vg_resume_args RUN_DIR CKPT_NAME: prints "--resume RUN_DIR/CKPT_NAME" if RESUME=1 and it exists.
# Usage: mapfile -t extra < <(vg_resume_args "$dir" checkpoint.pth)
vg_resume_args() {
    if [[ "${RESUME:-0}" == "1" && -f "$1/$2" ]]; then
        printf '%s\n' --resume "$1/$2"
    fi
}

# vg_in_list WORD LIST...: true if WORD is one of LIST.
vg_in_list() {
    local w="$1"; shift
    local x
    for x in "$@"; do [[ "$x" == "$w" ]] && return 0; done
    return 1
}

# vg_check_choice WHAT WORD ALLOWED...: exit with a clear message if WORD is not allowed.
vg_check_choice() {
    local what="$1" word="$2"; shift 2
    if ! vg_in_list "$word" "$@"; then
        printf 'error: unknown %s "%s"; expected one of: %s\n' "$what" "$word" "$*" >&2
        exit 2
    fi
}
