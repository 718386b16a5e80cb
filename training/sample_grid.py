"""The training sample grid: one row per context, drawn from the same noise every time.

A fixed seed means the grids saved during a run differ only because the model changed, so they show
training progress; the final grid goes into the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import MAX_IMAGES, SpritePipeline, make_grid, upscale
from training.judge import to_uint8_images

GRID_SEED = 0
SHEET_GAP_GREY = (128, 128, 128)  # between real and generated sprites in a comparison sheet
SHEET_SCALE = 4
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


def comparison_sheet(evaluator_or_real: Any, samples_uint8: np.ndarray,
                     requested: np.ndarray, per_context: int = 8, seed: int = 0, focus: int | None = None,
                     focus_rows: int = 4) -> np.ndarray:
    """A uint8 sheet, one row per context: `per_context` real sprites (seeded choice), a grey gap, then as many
    samples asked for that context (seeded choice); grey cells where a context has fewer. Context index
    `focus` gets `focus_rows` rows instead of one, to look hard at a weak context at the same size.

    Side by side at the same pixel size, speckle, off-white backgrounds and muddy colours show at a glance.
    evaluator_or_real: an Evaluator, or (real sprites (N, R, R, 3) uint8, their context indices (N,)).
    """
    if hasattr(evaluator_or_real, "real"):  # a training.evaluate.Evaluator
        real, labels, contexts = evaluator_or_real.real, evaluator_or_real.labels, len(evaluator_or_real.names)
    else:
        real, labels = to_uint8_images(evaluator_or_real[0]), np.asarray(evaluator_or_real[1])
        contexts = int(max(labels.max(), np.max(requested))) + 1
    samples, requested = to_uint8_images(samples_uint8), np.asarray(requested)
    if samples.ndim != 4 or samples.shape[1:] != real.shape[1:] or len(requested) != len(samples):
        raise ValueError(f"a comparison sheet needs samples shaped like the real sprites {real.shape[1:]} and one "
                         f"context per sample, got samples {samples.shape} and {len(requested)} contexts")
    if not isinstance(per_context, int) or per_context < 1:
        raise ValueError(f"per_context must be a whole number of at least 1, got {per_context!r}")
    rng = np.random.default_rng(seed)
    gap = np.empty(real.shape[1:], np.uint8)
    gap[:] = SHEET_GAP_GREY

    def pick(pool: np.ndarray, rows: int) -> list[list[np.ndarray]]:
        chosen = list(pool[np.sort(rng.choice(len(pool), min(per_context * rows, len(pool)), replace=False))])
        chosen += [gap] * (per_context * rows - len(chosen))
        return [chosen[i:i + per_context] for i in range(0, len(chosen), per_context)]

    cells = []
    for c in range(contexts):
        rows = focus_rows if c == focus else 1
        real_rows, sample_rows = pick(real[labels == c], rows), pick(samples[requested == c], rows)
        for real_row, sample_row in zip(real_rows, sample_rows, strict=True):
            cells += [*real_row, gap, *sample_row]
    return make_grid(np.stack(cells), ncols=2 * per_context + 1, background=SHEET_GAP_GREY)


def save_comparison_sheet(sheet: np.ndarray, path: str | Path, scale: int = SHEET_SCALE) -> Path:
    """The sheet as a PNG, enlarged by a whole factor with nearest neighbours so every sprite pixel stays sharp."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    upscale(sheet, scale).save(path, format="PNG")
    return path
