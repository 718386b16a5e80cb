"""Sampling speed with the whole loop as CUDA graphs (model/graphs.py) against sampling step by step.

Every path runs the same weights with the same seed, and so the same noise (drawn on the CPU):
  eager      SpritePipeline step by step, eager fp32: the reference and the speed-up's base
  compiled   SpritePipeline step by step with the compiled whole step (enable_fast_sampling; on CUDA one
             CUDA graph replay per step)
  chunked    ChunkedSampler without graphs: the same loop a chunk at a time, eager (the loop's own cost)
  graphs     ChunkedSampler with CUDA graphs: one replay per chunk of --chunk_steps steps
Each row says how far its sprites are from the eager path's (uint8 levels; 0 / 0.00 is identical). Then a
torch.profiler summary of one eager DDPM step, to show where a step's time goes: top ops by self CUDA time
on a GPU (by self CPU time on the CPU), and how much of the step's wall time the GPU spends computing.

    python benchmarks/graph_sampling.py --device cuda --guidance_scale 2   # benchmarks/gpu.sh graphs
    python benchmarks/graph_sampling.py --device cpu --steps 4 --paths chunked graphs   # does it run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import best_time, machine_name
from model import SpriteOutput, load_pipeline
from model.graphs import ChunkedSampler

PATHS = ("compiled", "chunked", "graphs")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runners(args: argparse.Namespace, device: torch.device) -> list[tuple[str, Callable[..., SpriteOutput]]]:
    """(label, sample function) for the eager reference and each chosen path."""
    eager = load_pipeline(args.model, device=str(device))
    chosen: list[tuple[str, Callable[..., SpriteOutput]]] = [("eager, step by step", eager)]
    if "compiled" in args.paths:
        fast = load_pipeline(args.model, device=str(device))
        fast.enable_fast_sampling(compile=True, whole_step=True)
        chosen.append(("compiled whole step, step by step", fast))
    for chunk in args.chunk_steps:
        if "chunked" in args.paths:
            chosen.append((f"chunks of {chunk}, eager", ChunkedSampler(eager, chunk)))
        if "graphs" in args.paths:
            graphs = ChunkedSampler(eager, chunk, cuda_graphs=True)
            label = f"chunks of {chunk}, CUDA graphs"
            chosen.append((label if graphs.uses_cuda_graphs else f"{label} (fell back: eager chunks)", graphs))
    return chosen


def profile_step(pipe, sprites: int, guidance_scale: float, device: torch.device, rows: int = 15) -> str:
    """torch.profiler over one eager DDPM step (the first, t = T), after a warm-up step."""
    size, names = pipe.unet.config.sample_size, pipe.context_names
    shape = (sprites, 3, size, size)
    big_t = pipe.num_train_steps
    step = partial(pipe.denoise_step, torch.randn(shape, device=device), torch.tensor(big_t - 1, device=device),
                   torch.eye(len(names), device=device)[torch.arange(sprites) % len(names)],
                   pipe.noise_schedule.step_table([(big_t, big_t - 1)]).to(device, torch.float32)[0],
                   torch.randn(shape, device=device),
                   None if guidance_scale == 1 else torch.tensor(guidance_scale, device=device))
    cuda = device.type == "cuda"
    with torch.inference_mode():
        step()
        synchronize(device)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            start = time.perf_counter()
            step()
            synchronize(device)
            wall = time.perf_counter() - start
    averages = prof.key_averages()
    summary = f"one eager DDPM step, {sprites} sprites, guidance {guidance_scale:g}: {wall * 1000:.2f} ms wall"
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in averages) / 1000
        summary += (f", {busy:.2f} ms of it on the GPU ({busy / (wall * 1000):.0%}) in {len(kernels)} "
                    f"kernels and copies; the rest is the host launching them")
    table = averages.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows)
    return f"{summary}\n\n```\n{table}\n```"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (a free Space has 2 cores)")
    parser.add_argument("--sprites", type=int, default=16)
    parser.add_argument("--runs", nargs="+", default=["ddpm:500", "ddim:50"], help="sampler:steps pairs (ddpm, ddim)")
    parser.add_argument("--steps", type=int, default=None, help="use this many steps in every run (a quick check)")
    parser.add_argument("--chunk_steps", type=int, nargs="+", default=[50, 500],
                        help="steps per chunk (per CUDA graph); more than a run's steps: the whole loop in one")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (2 = app default)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="besides the eager reference")
    parser.add_argument("--no_profile", action="store_true", help="skip the profile of one step")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chosen = runners(args, device)
    print(f"machine: {machine_name(device)}; torch {torch.__version__}")
    print(f"{args.sprites} sprites per run, guidance {args.guidance_scale:g}, seed 0. first call: the run that "
          "compiles or captures (eager paths: a plain first run); s: best of the timed runs after it\n")
    print("| sampler | steps | path | first call s | s | ms/step | img/s | speed-up vs eager | "
          "vs eager: max / mean levels |")
    print("| --- " * 9 + "|")
    names = chosen[0][1].context_names
    context = torch.eye(len(names))[torch.arange(args.sprites) % len(names)]
    for run in args.runs:
        sampler, steps = run.split(":")
        steps = args.steps or int(steps)
        repeats = 1 if steps >= 200 else 3
        request = dict(context=context, num_images=args.sprites, num_inference_steps=steps, sampler=sampler,
                       seed=0, guidance_scale=args.guidance_scale)
        reference, eager_s = None, None
        for label, sample in chosen:
            synchronize(device)
            start = time.perf_counter()
            sprites = sample(**request).array.astype(int)
            synchronize(device)
            first = time.perf_counter() - start
            seconds = best_time(partial(sample, **request), repeats, device, warmup=False)
            if reference is None:
                reference, eager_s = sprites, seconds
            levels = np.abs(sprites - reference)
            print(f"| {sampler} | {steps} | {label} | {first:.2f} | {seconds:.3f} | {seconds / steps * 1000:.2f} | "
                  f"{args.sprites / seconds:.1f} | {eager_s / seconds:.1f}x | {levels.max()} / {levels.mean():.2f} |",
                  flush=True)
    for label, sample in chosen:
        if isinstance(sample, ChunkedSampler) and sample.fallback_reason:
            print(f"\n{label}: {sample.fallback_reason}")
    if not args.no_profile:
        print("\n" + profile_step(chosen[0][1], args.sprites, args.guidance_scale, device))


if __name__ == "__main__":
    main()
