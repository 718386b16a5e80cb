"""How close a guidance-distilled model's one pass is to its teacher's two: on a fixed batch of 256 noisy training
sprites (seed 0), the mean squared difference between the student's one-pass prediction and the teacher's guided
prediction, uncond + s (cond - uncond), next to the gap guidance opens (the teacher's conditional prediction
against its guided one: where the student starts).

    python -m studies.guidance_gap --model runs/distill-g3                 # teacher: the bundled model
    python -m studies.guidance_gap --model runs/distill-g3/checkpoint-800  # a checkpoint's EMA weights

A second table asks whether the student falls short in a direction a different scale makes up for: for each teacher
scale, the student scale (in steps of 0.1 across its knots) whose one pass comes closest to the teacher's two.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from model import SpritePipeline, load_pipeline
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


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the student: a pipeline folder or a checkpoint")
    parser.add_argument("--teacher", default=None, help="the teacher (default: the bundled model)")
    parser.add_argument("--knots", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="a checkpoint's scales")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0])
    args = parser.parse_args()
    teacher = load_pipeline(args.teacher)
    student = student_pipeline(args.model, teacher, args.knots)
    data = load_dataset("default", hflip=False)
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(data), generator=generator)[:256]
    clean, context = data.images[index], data.contexts[index]
    t = torch.randint(1, teacher.num_train_steps + 1, (256,), generator=generator)  # course steps 1..T
    noisy = teacher.noise_schedule.add_noise(clean, torch.randn(clean.shape, generator=generator), t)
    timestep = unet_timestep(t).float()
    conditional = teacher.predict_noise(noisy, timestep, context)
    candidates = torch.arange(round(student.guidance_knots[0] * 10), round(student.guidance_knots[-1] * 10) + 1) / 10
    gap_rows, closest_rows = [], []
    for scale in args.scales:
        guided = teacher.guided_output(noisy, timestep, context, torch.tensor(scale))
        gap = float((conditional - guided).pow(2).mean())
        error = float((student.predict_noise(noisy, timestep, student.with_guidance(context, scale)) - guided)
                      .pow(2).mean())
        gap_rows.append(f"| {scale:g} | {error:.5f} | {gap:.5f} | {error / gap:.0%} |")
        errors = [float((student.predict_noise(noisy, timestep, student.with_guidance(context, float(c))) - guided)
                        .pow(2).mean()) for c in candidates]
        best = min(range(len(errors)), key=errors.__getitem__)
        closest_rows.append(f"| {scale:g} | {float(candidates[best]):.1f} | {errors[best]:.5f} | "
                            f"{errors[best] / gap:.0%} |")
    print("| scale | one pass against two (MSE) | gap guidance opens (MSE) | share of the gap left |")
    print("| --- | --- | --- | --- |\n" + "\n".join(gap_rows))
    print("\n| teacher scale | closest student scale | one pass against two (MSE) | share of the gap left |")
    print("| --- | --- | --- | --- |\n" + "\n".join(closest_rows))

if __name__ == "__main__":
    main()
