"""What sampling hands back, step by step and at the end, and what it takes as a context: shared by the
pipeline and the editing methods it inherits (each imports them from here, so neither imports the other)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

ContextSpec = str | Sequence[str] | Sequence[float] | np.ndarray | torch.Tensor


@dataclass
class DenoiseStep:
    """One step of the reverse process, as the app and callbacks see it."""

    index: int  # 0-based step number
    timestep: int  # course step t the network was asked about (T ... 1)
    sample: torch.Tensor  # x_{t_prev} after this update (and an edit's hook), (N, 3, H, W) in about [-1, 1]
    predicted_clean: torch.Tensor  # the network's x0 estimate at this step


@dataclass
class SpriteOutput(BaseOutput):
    images: list[Image.Image]  # one PIL image per sprite
    array: np.ndarray  # (N, H, W, 3) uint8, values 0..255
