#!/usr/bin/env bash
# One command to set a fresh machine up: torch from the local wheels (CPU/CUDA build as available),
# then this repository in editable mode with the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || python -m pip install -q torch torchvision
python -m pip install -q -e ".[dev]"
