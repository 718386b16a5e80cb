"""Pictures the app shows and hands out: crisp grids, a sprite sheet, the denoising GIF, the forward process.

Kept out of app.py so the UI file is only wiring, and so these can be tested without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import make_grid, sprite_tensor, upscale
from .pipeline import to_uint8
from .schedule import NoiseSchedule


def display_grid(sprites: np.ndarray, width: int = 384, ncols: int | None = None) -> Image.Image:
    """(N, H, W, 3) uint8 -> one padded grid, enlarged by a whole factor to at most ``width`` pixels.

    Whole factors with nearest-neighbour keep every sprite pixel a sharp square.
    """
    sheet = make_grid(sprites, ncols)
    return upscale(sheet, max(1, width // sheet.shape[1]))


def save_sheet(sprites: np.ndarray, path: str | Path, ncols: int | None = None) -> Path:
    """A game-ready sprite sheet: native resolution, no padding, lossless PNG."""
    path = Path(path)
    Image.fromarray(make_grid(sprites, ncols, padding=0)).save(path, format="PNG")
    return path


def save_gif(frames: Sequence[Image.Image], path: str | Path, frame_ms: int = 80, hold_ms: int = 1500) -> Path:
    """An endlessly looping GIF of ``frames`` that rests on the last one so the result can be seen.

    Each frame gets its own 256 colours. The last, the sprites the GIF rests on, is quantized by median cut, as PIL
    would by default; the frames on the way, mostly noise, by PIL's fast octree, which is far quicker and about a
    level further off on average. Median cut on every frame was most of the GIF's cost, and the GIF is built on
    the server's cores while the page draws the final sprites."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    path = Path(path)
    rgb = [frame if frame.mode == "RGB" else frame.convert("RGB") for frame in frames]
    paletted = [frame.quantize(method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for frame in rgb[:-1]]
    paletted.append(rgb[-1].quantize(method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    paletted[0].save(path, format="GIF", save_all=True, append_images=paletted[1:], duration=durations, loop=0)
    return path


def forward_noise(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """The eps of the forward tab: one draw from ``seed``, the same at every t."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def noisy_copies(sprite: np.ndarray, schedule: NoiseSchedule, timesteps: Sequence[int], seed: int = 0) -> np.ndarray:
    """One (H, W, 3) uint8 sprite at each course step t: x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps.

    Every copy uses the same eps (drawn from ``seed``), so moving t only changes the mix.
    """
    clean = sprite_tensor(sprite)[0]
    noise = forward_noise(clean.shape, seed)
    t = torch.as_tensor(list(timesteps))
    return to_uint8(schedule.add_noise(clean.expand(len(t), -1, -1, -1), noise.expand(len(t), -1, -1, -1), t))
