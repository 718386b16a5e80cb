#!/usr/bin/env bash
# The bundled model's recipe is train.py's defaults (training/options.py); this is the command.
#   bash studies/train_default.sh [OUTPUT_DIR]
# On one GPU it takes minutes (training/configs/gpu_bf16.yaml); on a 2-core CPU, hours.
set -euo pipefail
cd "$(dirname "$0")/.."
accelerate launch ${CONFIG:+--config_file "$CONFIG"} training/train.py --output_dir "${1:-runs/sprites}" \
  ${RESUME:+--resume_from_checkpoint "$RESUME"}
