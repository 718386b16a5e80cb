"""How close a guidance-distilled model's one pass is to its teacher's two: on a fixed batch of 256 noisy training
sprites (seed 0), the mean squared difference between the student's one-pass prediction and the teacher's guided
prediction, uncond + s (cond - uncond), next to the gap guidance opens (the teacher's conditional prediction
against its guided one: where the student starts).

    python -m studies.guidance_gap --model runs/distill-g3                 # teacher: model/teacher
    python -m studies.guidance_gap --model runs/distill-g3/checkpoint-800  # a checkpoint's EMA weights

A second table asks whether the student falls short in a direction a different scale makes up for: for each teacher
scale, the student scale (in steps of 0.1 across its knots) whose one pass comes closest to the teacher's two. A
third compares the student's own two passes (its rows at scale 1, conditional and unconditional) with the teacher's:
what a scale outside the knots, or ``two_pass_guidance=True``, gets (at scale 1: its conditional prediction).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from model import SpritePipeline, load_pipeline
from model.loading import TEACHER_MODEL_DIR
from model.schedule import unet_timestep
from model.unet import with_guidance_rows
from training.sprite_data import load_dataset


def student_pipeline(path: Path, teacher: SpritePipeline, knots: list[float]) -> SpritePipeline:
    """An exported pipeline folder, or a training checkpoint's EMA weights on the teacher's architecture."""
    if (path / "model_index.json").is_file():
        return load_pipeline(path)
    unet = with_guidance_rows(teacher.unet, len(knots))
    unet.load_state_dict(load_file(path / "ema" / "diffusion_pytorch_model.safetensors"))
    return SpritePipeline(unet.eval(), teacher.scheduler, teacher.context_names, knots)


def fixed_batch(teacher: SpritePipeline, size: int = 256, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy sprites, U-Net timesteps, contexts): ``size`` training sprites noised to random course steps."""
    data = load_dataset("default", hflip=False)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=generator)[:size]
    clean, context = data.images[index], data.contexts[index]
    t = torch.randint(1, teacher.num_train_steps + 1, (size,), generator=generator)  # course steps 1..T
    noisy = teacher.noise_schedule.add_noise(clean, torch.randn(clean.shape, generator=generator), t)
    return noisy, unet_timestep(t).float(), context


@torch.no_grad()
def guided_and_gap(teacher: SpritePipeline, batch: tuple[torch.Tensor, ...], scale: float
                   ) -> tuple[torch.Tensor, float]:
    """The teacher's guided prediction, uncond + scale (cond - uncond), on the batch, and the gap guidance opens:
    its MSE from the teacher's conditional prediction, where a student starts out."""
    noisy, timestep, context = batch
    guided = teacher.guided_output(noisy, timestep, context, torch.tensor(scale))
    return guided, float((teacher.predict_noise(noisy, timestep, context) - guided).pow(2).mean())


@torch.no_grad()
def one_pass_error(student: SpritePipeline, batch: tuple[torch.Tensor, ...], guided: torch.Tensor,
                   scale: float) -> float:
    """MSE of the student's one pass at ``scale`` against the teacher's guided prediction."""
    noisy, timestep, context = batch
    return float((student.predict_noise(noisy, timestep, student.with_guidance(context, scale)) - guided)
                 .pow(2).mean())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the student: a pipeline folder or a checkpoint")
    parser.add_argument("--teacher", default=None, help="the teacher (default: model/teacher)")
    parser.add_argument("--knots", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="a checkpoint's scales")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0])
    parser.add_argument("--two_pass_scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 5.0],
                        help="scales for the third table: the student's own two passes against the teacher's")
    args = parser.parse_args()
    teacher = load_pipeline(args.teacher or TEACHER_MODEL_DIR)
    student = student_pipeline(args.model, teacher, args.knots)
    batch = fixed_batch(teacher)
    candidates = torch.arange(round(student.guidance_knots[0] * 10), round(student.guidance_knots[-1] * 10) + 1) / 10
    gap_rows, closest_rows = [], []
    for scale in args.scales:
        guided, gap = guided_and_gap(teacher, batch, scale)
        error = one_pass_error(student, batch, guided, scale)
        gap_rows.append(f"| {scale:g} | {error:.5f} | {gap:.5f} | {error / gap:.0%} |")
        errors = [one_pass_error(student, batch, guided, float(c)) for c in candidates]
        best = min(range(len(errors)), key=errors.__getitem__)
        closest_rows.append(f"| {scale:g} | {float(candidates[best]):.1f} | {errors[best]:.5f} | "
                            f"{errors[best] / gap:.0%} |")
    print("| scale | one pass against two (MSE) | gap guidance opens (MSE) | share of the gap left |")
    print("| --- | --- | --- | --- |\n" + "\n".join(gap_rows))
    print("\n| teacher scale | closest student scale | one pass against two (MSE) | share of the gap left |")
    print("| --- | --- | --- | --- |\n" + "\n".join(closest_rows))
    print("\n| scale | the student's two passes against the teacher's (MSE) | gap guidance opens (MSE) | share |")
    print("| --- | --- | --- | --- |")
    for scale in args.two_pass_scales:  # what scales outside the knots, and two_pass_guidance=True, get
        guided, gap = guided_and_gap(teacher, batch, scale)
        error = float((student.guided_output(*batch, torch.tensor(scale)) - guided).pow(2).mean())
        print(f"| {scale:g} | {error:.5f} | {gap:.5f} | {f'{error / gap:.0%}' if scale != 1 else 'no gap at 1'} |")

if __name__ == "__main__":
    main()
