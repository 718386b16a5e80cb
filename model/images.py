"""Sprite grids and crisp upscaling, shared by the app, training sample grids and the docs."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def sprite_tensor(sprite: np.ndarray) -> torch.Tensor:
    """(R, R, 3) uint8 -> (1, 3, R, R) float in [-1, 1], the model's scale (training/sprite_data.py's)."""
    return torch.from_numpy(np.array(sprite, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(127.5).sub(1)


def make_grid(sprites: np.ndarray, ncols: int | None = None, padding: int = 1,
              background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*(H+p)+p, cols*(W+p)+p, 3) uint8 sheet, row-major."""
    n, h, w, _ = sprites.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    sheet = np.empty((nrows * (h + padding) + padding, ncols * (w + padding) + padding, 3), np.uint8)
    sheet[:] = background
    for i, sprite in enumerate(sprites):
        r, c = divmod(i, ncols)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        sheet[y:y + h, x:x + w] = sprite
    return sheet


def upscale(image: np.ndarray | Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour upscaling: pixel art stays crisp instead of blurring."""
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
