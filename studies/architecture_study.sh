#!/usr/bin/env bash
# The architecture study (docs/study-history.md): train each preset for the same budget
# with the same recipe, then evaluate it. Run several copies side by side on different cores,
# e.g. with one thread each on a 2-core machine:
#   OMP_NUM_THREADS=1 bash studies/architecture_study.sh base small-noattn &
#   OMP_NUM_THREADS=1 bash studies/architecture_study.sh base-noattn small tiny &
# then: python benchmarks/model_cost.py --json runs/study/cost.json
#       python -m studies.study_table runs/study
# STEPS (default 2500, batch 128) and NUM_PER_CONTEXT (default 100) set the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-2500}
NUM_PER_CONTEXT=${NUM_PER_CONTEXT:-100}
OUT=${OUT:-runs/study}
for preset in "$@"; do
  run="$OUT/$preset"
  if [ ! -f "$run/unet/diffusion_pytorch_model.safetensors" ]; then
    accelerate launch --config_file training/configs/cpu.yaml training/train.py \
      --dataset default --resolution 16 --model_config "$preset" \
      --train_batch_size 128 --max_train_steps "$STEPS" \
      --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 200 \
      --use_ema --context_dropout 0.1 --seed 0 \
      --checkpointing_steps 500 --checkpoints_total_limit 1 \
      --save_images_steps 0 --logger tensorboard \
      --output_dir "$run" --resume_from_checkpoint latest
  fi
  python -m training.evaluate --model "$run" --dataset default --num_per_context "$NUM_PER_CONTEXT" \
    --runs ddim:50:2 ddpm:500:2 --json "$run/eval.json"
done
