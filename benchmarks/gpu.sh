#!/usr/bin/env bash
# The GPU figures (docs/performance.md, docs/study.md), with the same scripts as on the CPU (needs requirements.txt's packages with
# a CUDA build of PyTorch). Three parts, in order of importance; on the H100 this project used, sampling
# took about 3 minutes, and the other two did not finish within the 2 and 3.3 minutes given them (CHANGELOG.md), so
# give each part a call of its own where device time comes in slices. Each part has a time limit, so one
# that hangs cannot take the others' time. Tables go to $OUT (runs/gpu), the time-to-quality run's
# checkpoints to $RUNS (runs/gpu_ttq).
#   bash benchmarks/gpu.sh                     # all three parts
#   bash benchmarks/gpu.sh training quality    # some of them
#   bash benchmarks/gpu.sh long                # not in the default three: the bundled preset trained longer (docs/study.md)
#   bash benchmarks/gpu.sh batch               # nor this: the bundled preset at batch 64, the same 600 epochs
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
RUNS=${RUNS:-runs/gpu_ttq}
PYTHON=${PYTHON:-python3}
PARTS=${*:-sampling training quality}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"

for part in $PARTS; do
  case $part in
    sampling)  # the app's guidance 2; ours against the eager diffusers loop, and against our eager path
      timeout 300 "$PYTHON" benchmarks/sampling.py --device cuda --batches 1 16 64 --runs ddpm:500 ddim:50 \
        --guidance_scale 2 --check_eager 2>&1 | tee "$OUT/sampling.md" ;;
    training)  # the EMA update alone, then images/s at batch 2,048 of the bundled model's preset and of the
               # quality study's largest candidate, with and without torch.compile
      timeout 60 "$PYTHON" benchmarks/training_speed.py --device cuda --ema --presets medium1-g16 2>&1 \
        | tee "$OUT/ema.md"
      timeout 240 "$PYTHON" benchmarks/training_speed.py --device cuda --presets medium1-g16 large-g16 --repeats 1 \
        --steps 300 2>&1 | tee "$OUT/training.md"
      timeout 150 "$PYTHON" benchmarks/training_speed.py --device cuda --presets medium1-g16 large-g16 --repeats 1 \
        --steps 300 --no_compile 2>&1 | tee "$OUT/training_eager.md" ;;
    quality)  # the default recipe (train.py's defaults) in bf16, a checkpoint every 1,000 steps, each then held
              # against the quality bar at DDPM 500
      rm -rf "$RUNS"
      timeout 540 "$PYTHON" benchmarks/time_to_quality.py --config training/configs/gpu_bf16.yaml --every 1000 \
        --output "$RUNS" 2>&1 | tee "$OUT/time_to_quality.md"
      cp "$RUNS/time_to_quality.json" "$OUT/" 2>/dev/null ;;
    study)  # the quality study (studies/quality_study.py): every arm side by side, each time-boxed
      timeout "${STUDY_LIMIT:-560}" "$PYTHON" -m studies.quality_study --out "$RUNS/study" \
        --max_train_minutes "${STUDY_MINUTES:-4.5}" --pack "$OUT" 2>&1 | tee "$OUT/study.log" ;;
    long)  # the bundled preset alone for longer (10,000 planned steps in a 6.5-minute box), next to the second
           # set with a budget sized for its 760 sprites (2,000 steps); both scored, the better pipelines packed
      timeout "${LONG_LIMIT:-590}" "$PYTHON" -m studies.quality_study --out "$RUNS/long" \
        --arms medium1-g16 nethack-medium1-g16-short --steps 10000 --max_train_minutes "${LONG_MINUTES:-6.5}" \
        --pack "$OUT" 2>&1 | tee "$OUT/long.log" ;;
    batch)  # the bundled preset at batch 64 for the recipe's 600 epochs (24,000 steps, time-boxed): the second set
            # came out crisper that way on the CPU but memorised more (docs/study.md); do the bundled 2,507 hold?
      timeout "${BATCH_LIMIT:-590}" "$PYTHON" -m studies.quality_study --out "$RUNS/batch" \
        --arms medium1-g16-b64 --steps 6000 --max_train_minutes "${BATCH_MINUTES:-6.5}" \
        --pack "$OUT" 2>&1 | tee "$OUT/batch.log" ;;
    *) echo "unknown part $part (sampling, training, quality, study, long, batch)" >&2; exit 2 ;;
  esac
done
