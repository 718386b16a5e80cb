"""Training speed: training/train.py against a naive loop, on the same model and data.

The baseline is the course's loop: a per-sample Dataset in a DataLoader, batch 100, fp32,
eager. Ours is training/train.py itself (the whole dataset on the device, index batches,
and on a GPU bf16, channels_last and torch.compile at a large batch), timed by its own
images/s log, which leaves out the first (warm-up or compile) step. The two alternate for
--repeats rounds, each run in a fresh Python process, and the table gives each one's median,
so a machine that speeds up or slows down during the run (a shared VM does) biases neither.

    python benchmarks/training_speed.py                  # CPU
    python benchmarks/training_speed.py --device cuda    # GPU: adds --mixed_precision bf16 etc.
    python benchmarks/training_speed.py --ema --presets tiny-g4   # the EMA update alone
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.common import machine_name  # noqa: E402
from model import NoiseSchedule, build_unet, make_scheduler, unet_timestep  # noqa: E402
from training.sprite_data import load_dataset  # noqa: E402


def naive_images_per_second(preset: str, steps: int, device: torch.device) -> float:
    """The course's loop: DataLoader over single sprites, batch 100, fp32, eager."""
    dataset = load_dataset("default")
    unet = build_unet(len(dataset.context_names), preset).to(device).train()
    schedule = NoiseSchedule(make_scheduler())
    schedule.alpha_bar = schedule.alpha_bar.to(device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, shuffle=True, drop_last=True)
    epochs = itertools.chain.from_iterable(itertools.repeat(loader))
    for step, (x0, context) in enumerate(itertools.islice(epochs, steps + 1)):
        x0, context = x0.to(device), context.to(device)
        noise = torch.randn_like(x0)
        t = torch.randint(1, schedule.num_steps + 1, (x0.shape[0],), device=device)
        predicted = unet(schedule.add_noise(x0, noise, t), unet_timestep(t), class_labels=context).sample
        loss = F.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 0:  # leave out the warm-up step, as train.py does
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * loader.batch_size / (time.perf_counter() - start)


def naive_in_fresh_process(preset: str, steps: int, device: torch.device) -> float:
    """naive_images_per_second in its own interpreter, as train.py runs in its own."""
    code = ("import sys, torch; from benchmarks.training_speed import "
            "naive_images_per_second as run; print(run(sys.argv[2], int(sys.argv[3]), torch.device(sys.argv[4])))")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), preset, str(steps), str(device)],
                            capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"the baseline failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.split()[-1])


def ours_images_per_second(preset: str, steps: int, extra: list[str]) -> float:
    """Run training/train.py for `steps` steps and read its images/s."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(ROOT / "training" / "train.py"), "--dataset", "default", "--model_config",
                   preset, "--max_train_steps", str(steps), "--output_dir", out, "--checkpointing_steps", "0",
                   "--save_images_steps", "0", "--logger", "none", "--no-use_ema", "--seed", "0", *extra]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    found = re.search(r"trained to step \d+: ([\d.]+) images/s", result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"train.py failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return float(found.group(1))


def ema_step_table(preset: str, device: torch.device, steps: int = 500, rounds: int = 2) -> None:
    """The EMA update alone: diffusers' per-tensor loop against train.py's foreach one (ms per step, ops)."""
    from diffusers.training_utils import EMAModel
    from torch.utils._python_dispatch import TorchDispatchMode

    from training.train import ema_model

    class CountOps(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountOps.count += 1
            return func(*args, **(kwargs or {}))

    unet = build_unet(len(load_dataset("default").context_names), preset).to(device)
    makers = {"per tensor (EMAModel default)": lambda: EMAModel(unet.parameters()),
              "foreach (train.ema_model)": lambda: ema_model(unet, 0.9999, 1.0, 0.75)}
    times: dict[str, list[float]] = {name: [] for name in makers}
    ops = {}
    for _ in range(rounds):  # alternate, so drift in the machine's speed biases neither
        for name, make in makers.items():
            ema = make()
            for _ in range(20):
                ema.step(unet.parameters())
            CountOps.count = 0
            with CountOps():
                ema.step(unet.parameters())
            ops[name] = CountOps.count
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                ema.step(unet.parameters())
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    print(f"machine: {machine_name(device)}; {preset}, {sum(1 for _ in unet.parameters())} weight tensors; "
          f"best of {rounds} alternating runs of {steps} EMA steps\n")
    print("| EMA update | ms per step | PyTorch ops per step |\n| --- | --- | --- |")
    for name in makers:
        print(f"| {name} | {min(times[name]):.2f} | {ops[name]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="+", default=["small"])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating baseline/ours rounds per model")
    parser.add_argument("--batch", type=int, default=None, help="our batch (default: 100 on CPU, 2048 on GPU)")
    parser.add_argument("--no_compile", action="store_true", help="GPU: ours without --torch_compile")
    parser.add_argument("--ema", action="store_true", help="time the EMA update alone instead")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.ema:
        if device.type == "cpu":
            torch.set_num_threads(2)  # like train.py's runs on this 2-core VM
        return ema_step_table(args.presets[0], device)
    gpu = device.type == "cuda"
    batch = args.batch or (2048 if gpu else 100)
    extra = ["--train_batch_size", str(batch)]
    extra += ["--mixed_precision", "bf16", "--channels_last"] if gpu else []
    extra += ["--torch_compile"] if gpu and not args.no_compile else []
    print(f"machine: {machine_name(device)}")
    print(f"baseline: per-sample DataLoader, batch 100, fp32, eager; ours: train.py {' '.join(extra)}")
    print(f"medians of {args.repeats} alternating runs of {args.steps} timed steps (range in brackets)\n")
    print("| model | baseline img/s | ours img/s | speed-up |")
    print("| --- | --- | --- | --- |")
    for preset in args.presets:
        baselines, ours = [], []
        for _ in range(args.repeats):
            baselines.append(naive_in_fresh_process(preset, args.steps, device))
            ours.append(ours_images_per_second(preset, args.steps, extra))
        baseline, mine = statistics.median(baselines), statistics.median(ours)
        print(f"| {preset} | {baseline:.0f} ({min(baselines):.0f}-{max(baselines):.0f}) | "
              f"{mine:.0f} ({min(ours):.0f}-{max(ours):.0f}) | {mine / baseline:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
