#!/usr/bin/env bash
# The run that trained the bundled default model (model/default/), on a 2-core CPU.
# Preset "tiny-g4" was chosen by the architecture study (README): the smallest preset, the only one
# whose cost meets the CPU latency targets, with the GroupNorm grouping (4 groups) that learned
# fastest. 14 minutes with two threads on this project's 2-core CPU.
#   bash training/train_default.sh [OUTPUT_DIR]
#   PRESET=small bash training/train_default.sh   # the same recipe, another preset (runs/default-small)
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-tiny-g4}
OUT=${1:-runs/default-$PRESET}
accelerate launch --config_file training/configs/cpu.yaml training/train.py \
  --dataset default --resolution 16 --model_config "$PRESET" \
  --train_batch_size 128 --max_train_steps 10000 \
  --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 200 \
  --use_ema --context_dropout 0.1 --seed 0 \
  --checkpointing_steps 500 --checkpoints_total_limit 2 \
  --save_images_steps 1000 --logger tensorboard \
  --output_dir "$OUT" ${RESUME:+--resume_from_checkpoint "$RESUME"}
