"""Docs figures from a model: a sample grid per context, and the same seeds without noise re-adding.

    python -m studies.make_figures --model model/default --output docs/figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model import load_pipeline, make_grid, upscale


def context_rows(pipe, per_context: int, seed: int, **kwargs) -> np.ndarray:
    """One row per context, the same starting noise for every run with the same seed."""
    names = pipe.context_names
    contexts = np.repeat(np.eye(len(names)), per_context, axis=0)
    out = pipe(contexts, num_images=len(contexts), seed=seed, **kwargs)
    return make_grid(out.array, ncols=per_context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="folder or Hub id (default: the bundled model)")
    parser.add_argument("--output", default="docs/figures")
    parser.add_argument("--per_context", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--guidance_scale", type=float, default=1.0)
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    per_context = min(args.per_context, 64 // len(pipe.context_names))
    common = {"num_inference_steps": args.steps, "sampler": "ddpm", "guidance_scale": args.guidance_scale}
    for name, add_noise in (("samples_ddpm.png", True), ("samples_no_noise.png", False)):
        grid = context_rows(pipe, per_context, args.seed, add_noise=add_noise, **common)
        upscale(grid, 4).save(output / name)
        print(f"wrote {output / name}: rows {', '.join(pipe.context_names)}; DDPM {args.steps} steps, "
              f"noise re-adding {'on' if add_noise else 'off'}, seed {args.seed}")


if __name__ == "__main__":
    main()
