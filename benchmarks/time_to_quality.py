"""Time to quality: wall-clock minutes of training until a checkpoint meets the quality bar.

Launches training/train.py through `accelerate launch` with a checkpoint every --every steps,
then evaluates the checkpoints' EMA weights in order (training/evaluate.py, the same runs and
sample counts as the bar) and reports the first that passes. A checkpoint's time is when its
files were written, counted from the launch, so start-up, data loading and compilation count.
Evaluation runs after training, so it never slows the timed run.

    python benchmarks/time_to_quality.py --config training/configs/gpu_bf16.yaml \\
        --output runs/ttq -- --channels_last --torch_compile       # one GPU (after "--": train.py flags)
    python benchmarks/time_to_quality.py --preset tiny --max_steps 40 --every 20 \\
        --num_per_context 4 --runs ddim:10 --output /tmp/ttq           # a smoke test on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

from benchmarks.common import machine_name  # noqa: E402
from model import SpritePipeline, make_scheduler  # noqa: E402
from training.checkpointing import list_checkpoints, step_of  # noqa: E402
from training.evaluate import Evaluator, parse_run  # noqa: E402
from training.options import parse_args  # noqa: E402
from training.quality_bar import quality_bar_failures  # noqa: E402


def train(args: argparse.Namespace, extra: list[str]) -> float:
    """Run the training; returns the launch time (time.time())."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(args.config),
               str(ROOT / "training" / "train.py"),
               "--dataset", "default", "--model_config", args.preset, "--train_batch_size", str(args.batch),
               "--learning_rate", str(args.learning_rate), "--max_train_steps", str(args.max_steps),
               "--checkpointing_steps", str(args.every), "--save_images_steps", "0", "--logger", "none",
               "--seed", "0", "--output_dir", str(args.output), *extra]
    print("$", " ".join(command), flush=True)
    start = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    return start


def run_label(run: tuple[str, int, float | None]) -> str:
    sampler, steps, guidance = run
    return f"{sampler}:{steps}" + (f":{guidance:g}" if guidance is not None else "")


def written_at(folder: Path) -> float:
    """When the checkpoint's last file was written (the atomic rename keeps file times)."""
    return max(p.stat().st_mtime for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "cpu.yaml",
                        help="accelerate config (gpu_bf16.yaml on a GPU)")
    recipe = parse_args([])  # train.py's defaults are the default recipe
    parser.add_argument("--preset", default=recipe.model_config, help="default: the recipe's")
    parser.add_argument("--batch", type=int, default=recipe.train_batch_size, help="default: the recipe's")
    parser.add_argument("--learning_rate", type=float, default=recipe.learning_rate, help="default: the recipe's")
    parser.add_argument("--max_steps", type=int, default=recipe.max_train_steps,
                        help="default: the recipe's budget (0: its --num_epochs)")
    parser.add_argument("--every", type=int, default=500, help="checkpoint (and evaluation) interval in steps")
    parser.add_argument("--num_per_context", type=int, default=200)
    parser.add_argument("--runs", nargs="+", type=parse_run, default=[parse_run("ddpm:500:2")],
                        metavar="SAMPLER:STEPS[:GUIDANCE]", help="every run must pass (default: the app's guidance)")
    parser.add_argument("--output", type=Path, default=Path("runs/time_to_quality"))
    parser.add_argument("--skip_training", action="store_true", help="only evaluate the checkpoints in --output")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.skip_training:
        start = json.loads((args.output / "launch.json").read_text())["launched_at"]
    elif list_checkpoints(args.output):
        parser.exit(2, f"error: {args.output} already has checkpoints; pick a new --output or --skip_training\n")
    else:
        start = train(args, extra)
        (args.output / "launch.json").write_text(json.dumps({"launched_at": start}) + "\n")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    diffusers_logging.set_verbosity_error()  # the EMA folder's config has EMA fields UNet2DModel ignores
    evaluator = Evaluator("default")
    rows, reached = [], None
    print("| checkpoint step | minutes from launch | context accuracy | lowest context | Fréchet ratio "
          "| memorisation | meets the bar |\n|" + " --- |" * 7, flush=True)
    pipe = None
    for folder in list_checkpoints(args.output):
        step = step_of(folder)
        unet = UNet2DModel.from_pretrained(folder / "ema", use_safetensors=True)
        if pipe is None:
            pipe = SpritePipeline(unet, make_scheduler(), evaluator.names).to(device)
            if device.type == "cuda":  # the eager loop is launch-bound there (docs/performance.md)
                pipe.enable_fast_sampling()
        else:  # in place: one compile serves every checkpoint
            pipe.unet.load_state_dict(unet.state_dict())
        minutes = (written_at(folder) - start) / 60
        results = [evaluator.run(pipe, args.num_per_context, sampler, steps, guidance or 1.0, seed=0)
                   for sampler, steps, guidance in args.runs]
        failures = [f for r in results for f in quality_bar_failures(r)]
        rows.append({"step": step, "minutes": minutes, "results": results, "failures": failures})
        r = results[0]
        lowest = min(r["context_accuracy_per_context"].values())
        print(f"| {step} | {minutes:.1f} | {r['context_accuracy']:.3f} | {lowest:.2f} | {r['frechet_ratio']:.1f}x | "
              f"{r['memorisation_rate']:.1%} | {'yes' if not failures else '; '.join(failures)} |", flush=True)
        if not failures:
            reached = (step, minutes)
            break
    (args.output / "time_to_quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nmachine: {machine_name(device)}; preset {args.preset}, batch {args.batch}, {args.config.name}, "
          f"train.py flags {' '.join(extra) or '(none)'}; runs {' '.join(run_label(r) for r in args.runs)}, "
          f"{args.num_per_context} per context")
    print(f"time to quality: {reached[1]:.1f} min (step {reached[0]})" if reached
          else "time to quality: not reached within "
               + (f"{args.max_steps} steps" if args.max_steps else f"the recipe's {recipe.num_epochs} epochs"))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
