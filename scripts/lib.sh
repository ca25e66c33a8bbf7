#!/usr/bin/env bash
# Shared helpers for the reproduction scripts. Source it, never run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"     # from scripts/<method>/x.sh
#   vg_init "$@"; set -- "${VG_ARGS[@]+"${VG_ARGS[@]}"}"   # handles --dry-run, cds to the repo root
#   vg_launch hivg/train.py --lr 1e-4 ...                  # N-GPU launch (printed, or printed and run)
#
# Conventions
# - Dry run: `DRY_RUN=1 bash scripts/x.sh` or `bash scripts/x.sh --dry-run ...` prints every command,
#   one per line, prefixed with "+ " and shell-quoted so it can be copy-pasted, and runs nothing.
# - All paths come from environment variables with defaults relative to the repository root
#   (never absolute): DATA_ROOT, OUT_ROOT, CLIP_DIR, BEIT3_DIR, ... (see vg_default_paths).
# - NGPU (processes per node), MASTER_PORT, PYTHON can be overridden; each script sets its own NGPU
#   default to the official GPU count.
# - RESUME=1 makes the method helpers pass --resume <run>/<latest checkpoint> when one exists.

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

# vg_launch SCRIPT ARGS...: python -m torch.distributed.launch --nproc_per_node=$NGPU --use_env SCRIPT ARGS
vg_launch() {
    run "$PYTHON" -m torch.distributed.launch --nproc_per_node="${NGPU:-1}" \
        --master_port="$MASTER_PORT" --use_env "$@"
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
