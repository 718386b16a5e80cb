#!/usr/bin/env bash
# The run that trained the bundled default model (model/default/), on a 2-core CPU.
# Preset "small" was chosen by the architecture study (README): near-best quality at a
# sampling cost that lets the app meet its CPU latency targets.
#   bash training/train_default.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/default-small}
accelerate launch --config_file training/configs/cpu.yaml training/train.py \
  --dataset default --resolution 16 --model_config small \
  --train_batch_size 128 --max_train_steps 10000 \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 200 \
  --use_ema --context_dropout 0.1 --seed 0 \
  --checkpointing_steps 500 --checkpoints_total_limit 2 \
  --save_images_steps 1000 --logger tensorboard \
  --output_dir "$OUT" ${RESUME:+--resume_from_checkpoint "$RESUME"}
