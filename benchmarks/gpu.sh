#!/usr/bin/env bash
# The README's GPU figures in one run, with the same scripts as on the CPU (roughly 10 minutes on one
# H100; needs requirements.txt's packages with a CUDA build of PyTorch). Tables go to $OUT (runs/gpu).
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" benchmarks/sampling.py --device cuda --batches 1 16 64 --runs ddpm:500 ddim:50 2>&1 | tee "$OUT/sampling.md"
"$PYTHON" benchmarks/training.py --device cuda 2>&1 | tee "$OUT/training.md"
"$PYTHON" benchmarks/time_to_quality.py --config training/configs/gpu_bf16.yaml --every 1000 \
  --output "$OUT/time_to_quality" -- --channels_last --torch_compile 2>&1 | tee "$OUT/time_to_quality.md"
