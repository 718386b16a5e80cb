"""Redraw and repaint a sprite: SDEdit (Meng et al. 2021) and RePaint (Lugmayr et al. 2022).

Neither needs a new model or a second sampling loop. Both bend SpritePipeline's one reverse loop through an
:class:`EditPlan`: SDEdit starts it from the sprite forward-noised part of the way up (``start_t``); RePaint
starts from pure noise and, after every step, puts back the pixels it must keep, forward-noised to the level
just reached (``after_step``), optionally jumping back up the grid to let the seam settle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .images import sprite_tensor
from .inputs import real_number, whole_number
from .results import ContextSpec, DenoiseStep, SpriteOutput
from .samplers import SAMPLERS, get_sampler
from .sprites import fit_pixel_art, pad_to_square

MAX_JUMP_SAMPLES = 20  # RePaint's r; each one repeats the jumped-over steps, so the cost grows with it

# after_step(sample, t_prev, noised) -> sample: called after every step with x_{t_prev} in the sampler's units;
# noised(clean) is ``clean`` forward-noised to t_prev in the same units (fresh noise; ``clean`` itself at 0).
StepHook = Callable[[torch.Tensor, int, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class EditPlan:
    """How an edit bends the reverse loop. The default plan is plain sampling: pure noise at T, no hook."""

    clean: torch.Tensor | None = None  # (1 or N, 3, R, R) in [-1, 1]: the sprite to start from (with start_t)
    start_t: int | None = None  # run the grid's steps with t <= start_t only, from ``clean`` noised to the first one
    after_step: StepHook | None = None
    jump_length: int = 0  # RePaint's j: grid steps to go back up; 0 is off
    jump_n_sample: int = 1  # RePaint's r: each stretch of j steps runs r times; 1 is off

    def course_grid(self, grid: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (t, t_prev) pairs of the full grid that this plan runs."""
        return grid if self.start_t is None else [(t, t_prev) for t, t_prev in grid if t <= self.start_t]

    def visit_order(self, num_steps: int) -> list[int]:
        """Grid positions in the order the loop runs them; a position below the previous one's is a jump back.

        As in RePaint the stretches are counted from the clean end, so the last steps (the finest detail)
        are always resampled: after landing with a multiple of j steps left, go back up j steps, r - 1 times.
        """
        order: list[int] = []
        j = self.jump_length
        for position in range(num_steps):
            order.append(position)
            landed, left = position + 1, num_steps - position - 1
            if j and landed >= j and left % j == 0:
                for _ in range(self.jump_n_sample - 1):
                    order.extend(range(landed - j, landed))
        return order


PLAIN = EditPlan()  # plain sampling


# ---- fitting an upload to the model ---------------------------------------------------------
def fit_sprite(image: Image.Image | np.ndarray, resolution: int) -> np.ndarray:
    """A PIL image or an (H, W, 3|4) uint8 array -> (R, R, 3) uint8, fitted as the app's forward tab fits one.

    An (R, R, 3) array is used as is. Other sizes go through model.sprites.fit_pixel_art (transparency
    over white, padded to a square, area-averaged down or repeated up), as training fits its images.
    """
    expected = (f"image must be a PIL image or an (H, W, 3) or (H, W, 4) uint8 array (RGB or RGBA; "
                f"{resolution} x {resolution} RGB is used as is)")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape[:2]:
            raise ValueError(f"{expected}, got a {image.dtype} array of shape {image.shape}")
        if image.shape == (resolution, resolution, 3):
            return image.copy()
        picture = Image.fromarray(image)
    elif isinstance(image, Image.Image):
        if 0 in image.size:
            raise ValueError(f"{expected}, got an empty {image.width} x {image.height} image")
        picture = image
    else:
        raise ValueError(f"{expected}, got {type(image).__name__}")
    return np.array(fit_pixel_art(picture, resolution))  # a writable copy, like the (R, R, 3) case


def fit_mask(mask: Image.Image | np.ndarray, resolution: int) -> np.ndarray:
    """The pixels to repaint as an (R, R) bool array; True = repaint.

    Accepts bools; 0/1 integers; other integers as 0-255 grey; floats 0-1; a PIL image (as grey). Grey and
    floats are thresholded at half their range. Other sizes are padded to a square as the image is (so a mask
    drawn on the upload lines up) and fitted with nearest-neighbour, which keeps it binary.
    """
    expected = (f"mask must be a PIL image or a 2-D array of bools, 0-1 floats or 0-255 integers, "
                f"True or bright = repaint ({resolution} x {resolution}, or any size: it is fitted like the image)")
    if isinstance(mask, Image.Image):
        values = np.asarray(mask.convert("L"))
    elif isinstance(mask, np.ndarray):
        values = mask
    else:
        raise ValueError(f"{expected}, got {type(mask).__name__}")
    if values.ndim != 2 or values.size == 0 or values.dtype.kind not in "biuf":
        raise ValueError(f"{expected}, got a {values.dtype} array of shape {values.shape}")
    if values.dtype.kind == "b":
        repaint = values
    else:
        high = 1 if values.dtype.kind == "f" or values.max() <= 1 else 255
        low_seen, high_seen = float(values.min()), float(values.max())
        if not (np.isfinite(values).all() and low_seen >= 0 and high_seen <= high):
            raise ValueError(f"mask must be binary: bools, floats from 0 to 1 or integers from 0 to 255 "
                             f"(thresholded at half), got values from {low_seen:g} to {high_seen:g}")
        repaint = values >= high / 2
    if repaint.shape != (resolution, resolution):
        square = pad_to_square(Image.fromarray(repaint.astype(np.uint8) * 255), 0)  # padding is kept, not repainted
        repaint = np.asarray(square.resize((resolution, resolution), Image.NEAREST)) >= 128
    if not repaint.any():
        raise ValueError(f"mask is empty: nothing to repaint (no True pixel at {resolution} x {resolution})")
    return np.array(repaint, dtype=bool)


# ---- the pipeline's methods -----------------------------------------------------------------
class SpriteEditing:
    """SpritePipeline's redraw (SDEdit) and inpaint (RePaint); the loop itself is SpritePipeline._reverse_process."""

    def redraw(self, image: Image.Image | np.ndarray, context: ContextSpec | None = None, strength: float = 0.5,
               num_images: int = 1, num_inference_steps: int = 50, sampler: str = "ddim", add_noise: bool = True,
               noise_scale: float = 1.0, guidance_scale: float = 1.0, generator: torch.Generator | None = None,
               seed: int | None = None, callback: StepCallback | None = None) -> SpriteOutput:
        """Redraw a sprite (SDEdit): noise it part of the way, then let the model draw it back.

        strength: how far up it goes, t0 = round(strength * T). The run is exactly the steps of the
            ``num_inference_steps`` grid (over all of 0..T) with t <= t0, starting from the sprite noised by the
            forward process to the first of them. 0 returns the fitted sprite unchanged. When t0 = T (strength
            1) the sprite is forgotten: x_T of the forward process still holds a trace of it, so instead the
            run is plain sampling, equal to ``pipe(...)`` with the same seed and settings.
        num_images: variations of the one sprite, each from its own noise.
        Noise: the forward noise is the generator's first draw, then the loop's, all on the CPU.
        Other arguments as in SpritePipeline.__call__.
        """
        steps, sprite = self._redraw(image, context, strength, num_images, num_inference_steps, sampler, add_noise,
                                     noise_scale, guidance_scale, generator, seed)
        return self._collect(steps, callback, unchanged=np.repeat(sprite[None], num_images, axis=0))

    def redraw_steps(self, image: Image.Image | np.ndarray, context: ContextSpec | None = None,
                     strength: float = 0.5, num_images: int = 1, num_inference_steps: int = 50,
                     sampler: str = "ddim", add_noise: bool = True, noise_scale: float = 1.0,
                     guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                     seed: int | None = None) -> Iterator[DenoiseStep]:
        """Check the inputs now, then iterate over the steps of :meth:`redraw` (none at strength 0)."""
        return self._redraw(image, context, strength, num_images, num_inference_steps, sampler, add_noise,
                            noise_scale, guidance_scale, generator, seed)[0]

    def inpaint(self, image: Image.Image | np.ndarray, mask: Image.Image | np.ndarray,
                context: ContextSpec | None = None, num_images: int = 1, num_inference_steps: int = 50,
                sampler: str = "ddim", add_noise: bool = True, noise_scale: float = 1.0,
                guidance_scale: float = 1.0, jump_length: int = 0, jump_n_sample: int = 1,
                generator: torch.Generator | None = None, seed: int | None = None,
                callback: StepCallback | None = None) -> SpriteOutput:
        """Repaint the masked pixels of a sprite (RePaint); every other pixel comes back exactly as it was.

        mask: True (or bright) where the model draws; see :func:`fit_mask` for the forms it takes.
        Sampling starts from pure noise (the same draw as plain sampling); after every step to t_prev the
            pixels outside the mask are replaced by the sprite forward-noised to t_prev with fresh noise, and
            after the last step by the sprite itself.
        jump_length, jump_n_sample: RePaint's resampling, off by default. With both on, every stretch of
            jump_length grid steps runs jump_n_sample times, going back up by the forward process in between,
            so the fill has time to agree with what surrounds it; it costs about jump_n_sample times the
            steps. DDPM and DDIM only: diffusers' samplers walk their own timestep list.
        Other arguments as in SpritePipeline.__call__; all samplers work without jumps.
        """
        steps = self.inpaint_steps(image, mask, context, num_images, num_inference_steps, sampler, add_noise,
                                   noise_scale, guidance_scale, jump_length, jump_n_sample, generator, seed)
        return self._collect(steps, callback)

    def inpaint_steps(self, image: Image.Image | np.ndarray, mask: Image.Image | np.ndarray,
                      context: ContextSpec | None = None, num_images: int = 1, num_inference_steps: int = 50,
                      sampler: str = "ddim", add_noise: bool = True, noise_scale: float = 1.0,
                      guidance_scale: float = 1.0, jump_length: int = 0, jump_n_sample: int = 1,
                      generator: torch.Generator | None = None, seed: int | None = None) -> Iterator[DenoiseStep]:
        """Check the inputs now, then iterate over the steps of :meth:`inpaint`, jumps included."""
        self.check_inputs(num_images, num_inference_steps, sampler, guidance_scale, noise_scale)
        jump_length = whole_number("jump_length", jump_length, 0, num_inference_steps)
        jump_n_sample = whole_number("jump_n_sample", jump_n_sample, 1, MAX_JUMP_SAMPLES)
        course = [name for name, s in SAMPLERS.items() if s.is_course_formula]
        if jump_length and jump_n_sample > 1 and not get_sampler(sampler).is_course_formula:
            raise ValueError(f"resampling jumps (jump_length, jump_n_sample) work with the samplers "
                             f"{', '.join(course)}; {sampler} walks diffusers' own timestep list and cannot go "
                             f"back up it: use one of {', '.join(course)}, or jump_length=0")
        context_weights = self.context_vector(context, num_images)
        resolution = self.unet.config.sample_size
        sprite = sprite_tensor(fit_sprite(image, resolution)).to(self.device)
        repaint = torch.from_numpy(fit_mask(mask, resolution)).to(self.device)[None, None]

        def paste_known(sample: torch.Tensor, t_prev: int, noised: Callable[[torch.Tensor], torch.Tensor]
                        ) -> torch.Tensor:
            return torch.where(repaint, sample, noised(sprite))

        plan = EditPlan(after_step=paste_known, jump_length=jump_length, jump_n_sample=jump_n_sample)
        return self._reverse_process(context_weights, num_inference_steps, sampler, add_noise, noise_scale,
                                     guidance_scale, self._generator(generator, seed), plan)

    def _redraw(self, image: Image.Image | np.ndarray, context: ContextSpec | None, strength: float,
                num_images: int, num_inference_steps: int, sampler: str, add_noise: bool, noise_scale: float,
                guidance_scale: float, generator: torch.Generator | None, seed: int | None
                ) -> tuple[Iterator[DenoiseStep], np.ndarray]:
        """(the steps, the fitted sprite), every input checked before the first step runs."""
        self.check_inputs(num_images, num_inference_steps, sampler, guidance_scale, noise_scale)
        strength = real_number("strength", strength, 0.0, 1.0)
        context_weights = self.context_vector(context, num_images)
        sprite = fit_sprite(image, self.unet.config.sample_size)
        start_t = round(strength * self.num_train_steps)
        plan = EditPlan() if start_t == self.num_train_steps else \
            EditPlan(clean=sprite_tensor(sprite).to(self.device), start_t=start_t)
        steps = self._reverse_process(context_weights, num_inference_steps, sampler, add_noise, noise_scale,
                                      guidance_scale, self._generator(generator, seed), plan)
        return steps, sprite
