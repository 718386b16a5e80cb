"""The training sample grid: one row per context, drawn from the same noise every time.

A fixed seed means the grids saved during a run differ only because the model changed, so they show
training progress; the final grid goes into the model card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model import MAX_IMAGES, SpritePipeline, make_grid, upscale

GRID_SEED = 0
GRID_SCALE = 4  # 16 px sprites are hard to see; nearest-neighbour keeps them crisp


def context_grid(pipe: SpritePipeline, per_context: int, num_inference_steps: int, sampler: str = "ddim",
                 seed: int = GRID_SEED) -> np.ndarray:
    """(rows, cols, 3) uint8 sheet: row k holds per_context sprites for context k."""
    contexts = np.repeat(np.eye(len(pipe.context_names)), per_context, axis=0)
    generator = torch.Generator().manual_seed(seed)
    sprites = [pipe(chunk, num_images=len(chunk), num_inference_steps=num_inference_steps, sampler=sampler,
                    generator=generator).array
               for chunk in np.split(contexts, range(MAX_IMAGES, len(contexts), MAX_IMAGES))]
    return make_grid(np.concatenate(sprites), ncols=per_context)


def save_grid(grid: np.ndarray, path: str | Path, scale: int = GRID_SCALE) -> Path:
    """Write the grid as a PNG, upscaled so single pixels stay visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    upscale(grid, scale).save(path)
    return path
