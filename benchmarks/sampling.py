"""Sampling speed: our pipeline against a naive diffusers loop on the same weights.

The baseline is what diffusers' DDPMPipeline does: an eager fp32 U-Net call and the
scheduler's ``step`` at every step. "Two-pass" is SpritePipeline compiled, with the course's
two U-Net passes per guided step and the whole U-Net at every step (the app's path before
guidance distillation). Ours is SpritePipeline with its fast path (torch.compile, optional
bf16, one pass for a guidance-distilled model, optional DeepCache). All run here, in this
process, on the same machine.

    python benchmarks/sampling.py                 # CPU, 2 threads, like a free Space
    python benchmarks/sampling.py --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import inspect
import time
from functools import partial

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from benchmarks.common import best_time, forward_flops, machine_name, peak_flops  # noqa: E402
from model import get_sampler, load_pipeline  # noqa: E402
from model.engine import OPENVINO_ENGINES  # noqa: E402
from model.loading import TEACHER_MODEL_DIR  # noqa: E402


def naive_sample(pipe, scheduler, context: torch.Tensor, steps: int, seed: int = 0,
                 guidance_scale: float = 1.0) -> torch.Tensor:
    """DDPMPipeline's loop: eager U-Net, scheduler.step, every step (guidance: one batched call, as ours)."""
    generator = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    scheduler.set_timesteps(steps)
    sample = torch.randn(context.shape[0], 3, size, size, generator=generator).to(pipe.device)
    sample = sample * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(sample, t)
            if guidance_scale == 1.0:
                noise = pipe.unet(x, t.to(pipe.device), class_labels=context).sample
            else:
                both = pipe.unet(torch.cat([x, x]), t.to(pipe.device),
                                 class_labels=torch.cat([context, torch.zeros_like(context)])).sample
                conditional, unconditional = both.chunk(2)
                noise = unconditional + guidance_scale * (conditional - unconditional)
            stochastic = "generator" in inspect.signature(scheduler.step).parameters
            sample = scheduler.step(noise, t, sample, **({"generator": generator} if stochastic else {})).prev_sample
    return sample


def unet_share(pipe, run) -> float:
    """The share of one run's time spent inside U-Net calls (whole or DeepCache's outer pass)."""
    spent = [0.0]

    def timed(forward):
        def call(*args):
            start = time.perf_counter()
            out = forward(*args)
            spent[0] += time.perf_counter() - start
            return out
        return call
    saved = pipe.noise_predictor, pipe.split_forward
    pipe.noise_predictor, pipe.split_forward = timed(saved[0]), timed(saved[1])
    try:
        start = time.perf_counter()
        run()
        return spent[0] / (time.perf_counter() - start)
    finally:
        pipe.noise_predictor, pipe.split_forward = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="ours: model folder or Hub id (default: the bundled model)")
    parser.add_argument("--today", default=None,
                        help="the baseline's and the two-pass path's model, one that guides in two passes (default: "
                             "model/teacher, which the bundled model was distilled from)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (a free Space has 2 cores)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--runs", nargs="+", default=["ddpm:500", "ddim:50"],
                        help="sampler:steps[:cache interval]; samplers from model/samplers.py, e.g. dpm++2m:10 or "
                             "ddpm:500:5 (ours with the whole U-Net every 5 steps)")
    parser.add_argument("--bf16", action="store_true", help="our path with bf16 autocast")
    parser.add_argument("--no_compile", action="store_true", help="our path without torch.compile")
    parser.add_argument("--engine", choices=["torch", *OPENVINO_ENGINES], default="torch",
                        help="what runs our U-Net: torch, or OpenVINO in fp32, bf16 or int8 (model/engine.py)")
    parser.add_argument("--whole_step", choices=["auto", "yes", "no"], default="auto",
                        help="compile the whole step or the U-Net alone (auto: whole step on CUDA only)")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (2 = app default)")
    parser.add_argument("--cache_interval", type=int, default=1,
                        help="ours, for runs that name none: the whole U-Net every this many steps, its outer blocks "
                             "in between (DeepCache)")
    parser.add_argument("--check_eager", action="store_true",
                        help="also run our eager fp32 path with the same seed and report how far our sprites are "
                             "from it (uint8 levels)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipe = load_pipeline(args.today or TEACHER_MODEL_DIR, device=str(device))
    if pipe.guidance_knots:  # the baseline is the course's loop: context rows only, two passes
        parser.exit(2, f"error: --today {args.today} is guidance-distilled; the baseline needs a two-pass model\n")
    fast = load_pipeline(args.model, device=str(device))
    whole_step = {"auto": None, "yes": True, "no": False}[args.whole_step]
    fast.enable_fast_sampling(compile=not args.no_compile and args.engine == "torch", bf16=args.bf16,
                              whole_step=whole_step)
    if args.engine != "torch":
        try:
            fast.use_engine(args.engine)
        except ValueError as err:
            parser.exit(2, f"error: --engine {args.engine}: {err}\n")
    two_pass = load_pipeline(args.today or TEACHER_MODEL_DIR, device=str(device))
    two_pass.enable_fast_sampling(whole_step=whole_step)
    names, size = pipe.context_names, pipe.unet.config.sample_size
    dtype = "bf16" if args.bf16 or args.engine == "openvino-bf16" else "fp32"
    peak, peak_how = peak_flops(device, dtype)
    flops_per_image = forward_flops(pipe.unet, 1, size, pipe.unet.config.num_class_embeds)
    outer_flops = forward_flops(pipe.unet, 1, size, pipe.unet.config.num_class_embeds, outer_only=True)
    compiled = "whole step" if fast.step_function != fast.denoise_step else "U-Net"
    ours_how = f"SpritePipeline, {'eager' if args.no_compile else f'torch.compile ({compiled})'}, {dtype}" \
        if args.engine == "torch" else f"SpritePipeline, U-Net on {args.engine}"
    rows = fast.unet_rows(1, args.guidance_scale)
    ours_how += f", guidance {args.guidance_scale:g} in {'one pass' if rows == 1 else 'two passes'}" \
        if args.guidance_scale != 1 else ""
    print(f"machine: {machine_name(device)}; peak {peak / 1e9:.0f} GFLOP/s ({peak_how})")
    print(f"ours: {args.model or 'the bundled model'}; baseline and two-pass: {args.today or 'model/teacher'}")
    print(f"model: {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M parameters, "
          f"{flops_per_image / 1e6:.1f} MFLOP per image per step (torch FlopCounterMode); DeepCache's outer pass "
          f"{outer_flops / 1e6:.1f} MFLOP ({outer_flops / flops_per_image:.0%})")
    print(f"baseline: eager fp32 U-Net + diffusers scheduler.step per step (two passes per guided step); "
          f"two-pass: SpritePipeline compiled, two passes, whole U-Net every step; ours: {ours_how}\n")
    check = " vs eager fp32: max / mean levels |" if args.check_eager else ""
    print("| sampler | steps | whole U-Net every | sprites | baseline s | two-pass s | ours s | vs baseline | "
          "vs two-pass | ours ms/step | ours % of peak | ours in the U-Net | first call (compile) s |" + check)
    print("| --- " * (14 if args.check_eager else 13) + "|")
    for run in args.runs:
        sampler, steps, *cache = run.split(":")
        steps, interval = int(steps), int(cache[0]) if cache else args.cache_interval
        if sampler == "ddpm":
            scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        elif sampler == "ddim":
            scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        else:  # diffusers' own scheduler: the baseline is the same scheduler in the naive loop
            scheduler = get_sampler(sampler).make_scheduler(pipe.scheduler.config)
        for batch in args.batches:
            context = torch.eye(len(names), device=device)[torch.arange(batch) % len(names)]
            repeats = 1 if steps >= 200 else 3
            ours_run = partial(fast, context, num_images=batch, num_inference_steps=steps, sampler=sampler, seed=0,
                               guidance_scale=args.guidance_scale, cache_interval=interval)
            two_pass_run = partial(two_pass, context, num_images=batch, num_inference_steps=steps, sampler=sampler,
                                   seed=0, guidance_scale=args.guidance_scale, two_pass_guidance=True)
            start = time.perf_counter()
            # compiles here, for the batch shapes the timed runs use (both passes of DeepCache's)
            ours_run(num_inference_steps=max(2, interval + 1))
            warmup = time.perf_counter() - start
            two_pass_run(num_inference_steps=2)
            naive = partial(naive_sample, pipe, scheduler, context, steps, 0, args.guidance_scale)
            baseline = best_time(naive, repeats, device, warmup=repeats > 1)
            today = best_time(two_pass_run, repeats, device, warmup=repeats > 1)
            ours = best_time(ours_run, repeats, device, warmup=repeats > 1)
            flops = fast.unet_rows(batch, args.guidance_scale) * steps * (
                flops_per_image + (interval - 1) * outer_flops) / interval  # DeepCache: 1 whole pass, k - 1 outer
            row = (f"| {sampler} | {steps} | {interval} | {batch} | {baseline:.2f} | {today:.2f} | {ours:.2f} | "
                   f"{baseline / ours:.1f}x | {today / ours:.1f}x | {ours / steps * 1000:.1f} | "
                   f"{flops / ours / peak:.0%} | {unet_share(fast, ours_run):.0%} | {warmup:.1f} |")
            if args.check_eager:  # same seed, same noise (drawn on the CPU): only the U-Net path differs
                reference = pipe(context, num_images=batch, num_inference_steps=steps, sampler=sampler, seed=0,
                                 guidance_scale=args.guidance_scale).array.astype(int)
                levels = abs(ours_run().array.astype(int) - reference)
                row += f" {levels.max()} / {levels.mean():.2f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
