"""How exactly does a model take a little noise off real sprites? The last denoising steps decide whether a
pixel lands exactly on its colour, so a model that cannot clean a real sprite at t = 1 draws speckled ones.

    python -m studies.denoise_probe --model model/default
    python -m studies.denoise_probe --model runs/a runs/b --json probe.json     # models side by side

For each step t: real sprites (a fixed random subset of the dataset) are noised to x_t, the model predicts
the noise once, and the predicted clean sprite x0_hat is rounded to 8 bits as the app shows it. Reported:
the RMS error of the predicted noise (1 is what predicting zero gives), the share of pixels that come back
exactly, the mean error in 8-bit levels, colours per sprite of x0_hat next to the real sprites', and the share
of background pixels exactly the background colour, each also at what an eye tells apart (training/metrics.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from model import ModelLoadError, load_pipeline
from model.pipeline import to_uint8
from training.metrics import BACKGROUND_NEAR_LEVELS, COLOUR_GROUP_LEVELS, background_colour, pixel_statistics
from training.quality_bar import EYE_STATISTICS
from training.sprite_data import load_dataset

PROBE_STEPS = (1, 2, 5, 10, 20, 50, 100, 250)


@torch.no_grad()
def probe(pipe, images: torch.Tensor, contexts: torch.Tensor, steps=PROBE_STEPS, seed: int = 0) -> list[dict]:
    """One row per step t: how well one prediction at x_t recovers ``images`` ((N, 3, H, W) in [-1, 1])."""
    real = to_uint8(images)
    background = background_colour(real)
    real_stats = pixel_statistics(real, background)
    alpha_bar = pipe.noise_schedule.alpha_bar.float()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in steps:
        noise = torch.randn(images.shape, generator=generator)
        noisy = pipe.noise_schedule.add_noise(images, noise, t)
        predicted_noise, clean = pipe.predict_at(noisy, t, contexts)
        recovered = to_uint8(clean.clamp(-1, 1))
        stats = pixel_statistics(recovered, background)
        rows.append({
            "t": t, "noise_std": float((1 - alpha_bar[t]).sqrt()),
            "noise_rmse": float((predicted_noise - noise).pow(2).mean().sqrt()),
            "exact_pixels": float((recovered == real).all(-1).mean()),
            "mean_level_error": float(np.abs(recovered.astype(int) - real.astype(int)).mean()),
            **{name: stats[name] for name in ("background_exact_share", "colours_per_sprite", *EYE_STATISTICS)},
            **{f"real_{name}": real_stats[name] for name in ("colours_per_sprite", "colour_groups_per_sprite")},
        })
    return rows


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    what = (f"noise RMSE / exact pixels / colours (within {COLOUR_GROUP_LEVELS} levels) / "
            f"background exact (within {BACKGROUND_NEAR_LEVELS} levels)")
    head = "| t | noise std | " + " | ".join(f"{n}: {what}" for n in names) + " |"
    lines = [head, "|" + " --- |" * (2 + len(names))]
    for i, row in enumerate(results[names[0]]):
        cells = [f"{r[i]['noise_rmse']:.3f} / {r[i]['exact_pixels']:.3f} / {r[i]['colours_per_sprite']:.0f} "
                 f"({r[i]['colour_groups_per_sprite']:.0f}) / {r[i]['background_exact_share']:.2f} "
                 f"({r[i]['background_near_share']:.2f})" for r in results.values()]
        lines.append(f"| {row['t']} | {row['noise_std']:.3f} | " + " | ".join(cells) + " |")
    real = results[names[0]][0]
    lines.append(f"\nReal sprites: {real['real_colours_per_sprite']:.0f} colours per sprite "
                 f"({real['real_colour_groups_per_sprite']:.0f} within {COLOUR_GROUP_LEVELS} levels).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["model/default"], help="model folders or Hub repos")
    parser.add_argument("--dataset", default="default")
    parser.add_argument("--num_sprites", type=int, default=512)
    parser.add_argument("--steps", type=int, nargs="+", default=list(PROBE_STEPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, hflip=False)
    pick = np.random.default_rng(args.seed).permutation(len(data))[:args.num_sprites]
    images, contexts = data.images[pick], data.contexts[pick]
    results = {}
    for source in args.model:
        try:
            pipe = load_pipeline(source)
        except ModelLoadError as err:
            parser.exit(2, f"error: {err}\n")
        if pipe.context_names != data.context_names:
            parser.exit(2, f"error: {source} draws {pipe.context_names}, the dataset holds {data.context_names}\n")
        results[source] = probe(pipe, images, contexts, args.steps, args.seed)
    print(table(results))
    print(f"\n{len(pick)} sprites of {args.dataset}, seed {args.seed}, one prediction per step, no guidance.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
