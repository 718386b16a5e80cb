"""The forward tab's pictures, from a checked sprite and step (ui/events.py checks the request values).

The forward process on one sprite, and what the network makes of it: the noise it must find, the noise it
predicts and the clean sprite that prediction implies, x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

from model import SpritePipeline, to_uint8, upscale
from model.gallery import forward_noise, noisy_copies
from model.images import sprite_tensor
from ui.figures import guess_figure

STRIP = (0, 100, 250, 500)  # the forward-process strip, as the course draws it
NOISE_CONTRAST = 0.5  # noise is shown at half contrast: -2 to 2 (95% of a Gaussian's draws) spans black to white
SPRITE_SCALE, STRIP_SCALE = 16, 8  # whole enlargements: every sprite pixel stays a sharp square
CLOSE_LEVELS = 8  # x0_hat pixels within this many 8-bit levels of x0 count as right (about what an eye tells apart)
CURVE_POINTS = 26  # the guess at every t: t = 1, 21, 41, ..., 500, one U-Net call of this many rows


def forward_view(pipe: SpritePipeline, clean: np.ndarray, t: int) -> tuple[Image.Image, list, str]:
    """(x_t enlarged, the strip at STRIP's steps with captions, the formula with this t's coefficients)."""
    copies = noisy_copies(clean, pipe.noise_schedule, [t, *STRIP])
    ab = float(pipe.noise_schedule.alpha_bar[t])
    # Two aligned lines: on one, a phone's screen cut the coefficients off.
    formula = (f"$$\\begin{{aligned}} x_{{{t}}} &= \\sqrt{{\\bar\\alpha_{{{t}}}}}\\,x_0 + "
               f"\\sqrt{{1-\\bar\\alpha_{{{t}}}}}\\,\\epsilon \\\\ "
               f"&= {ab ** 0.5:.3f}\\,x_0 + {(1 - ab) ** 0.5:.3f}\\,\\epsilon \\end{{aligned}}$$")
    strip = [(upscale(c, STRIP_SCALE), f"t = {s}") for c, s in zip(copies[1:], STRIP, strict=True)]
    return upscale(copies[0], SPRITE_SCALE), strip, formula


def guess_at(pipe: SpritePipeline, clean: np.ndarray, steps: np.ndarray, context: str | None) -> dict:
    """The forward tab's sprite noised with its one eps to each of ``steps`` and guessed in one U-Net call (a row
    per t): eps, eps_hat and x0_hat (CPU tensors), the RMS error of eps_hat and the share of x0_hat within
    CLOSE_LEVELS of x0, per row. The single guess and the curve over t both come from here."""
    x0 = sprite_tensor(clean)
    noise = forward_noise(x0.shape[1:])[None]
    t = torch.as_tensor(steps)
    noisy = pipe.noise_schedule.add_noise(x0.expand(len(t), -1, -1, -1), noise, t).float()
    predicted_noise, predicted_clean = (x.cpu() for x in pipe.predict_at(noisy.to(pipe.device), t,
                                                                         pipe.context_vector(context, len(t))))
    guessed, real = to_uint8(predicted_clean.clamp(-1, 1)), to_uint8(x0)[0]
    return {"noise": noise, "predicted_noise": predicted_noise, "predicted_clean": predicted_clean,
            "noise_rmse": (predicted_noise - noise).pow(2).mean(dim=(1, 2, 3)).sqrt().numpy(),
            "clean_close": (np.abs(guessed.astype(int) - real.astype(int)) <= CLOSE_LEVELS).all(-1).mean(axis=(1, 2))}


def network_guess(pipe: SpritePipeline, clean: np.ndarray, t: int,
                  context: str | None) -> tuple[Image.Image | None, Image.Image | None, Image.Image | None, str]:
    """At step t of the forward tab (the same eps): (the noise eps, the network's eps_hat, its x0_hat, a caption
    with how far off eps_hat is). ``context``: the name the network is told, or None (unconditional)."""
    if t == 0:
        return None, None, None, "At t = 0 there is no noise to find: move t up."
    guess = guess_at(pipe, clean, np.array([t]), context)
    error, close = float(guess["noise_rmse"][0]), float(guess["clean_close"][0])
    told = f"told *{context}*" if context else "told no context"
    ab = float(pipe.noise_schedule.alpha_bar[t])
    caption = (f"One U-Net call at t = {t}, {told}. RMS error of the predicted noise: **{error:.2f}** (guessing no "
               f"noise at all scores 1.00). At this t an error in ε̂ shows {((1 - ab) / ab) ** 0.5:.2f} times as "
               f"large in x̂₀ (√(1 − ᾱ) / √ᾱ), which is within {CLOSE_LEVELS} levels of x₀ at **{close:.0%}** of its "
               "pixels. Noise is shown at half contrast (-2 is black, +2 white).")

    def picture(x: torch.Tensor) -> Image.Image:
        return upscale(to_uint8(x)[0], SPRITE_SCALE)

    return (picture(guess["noise"] * NOISE_CONTRAST), picture(guess["predicted_noise"] * NOISE_CONTRAST),
            picture(guess["predicted_clean"].clamp(-1, 1)), caption)


def guess_by_step(pipe: SpritePipeline, clean: np.ndarray, context: str | None) -> dict[str, np.ndarray]:
    """The forward tab's guess at every t at once (t = 1 .. T in CURVE_POINTS steps): the RMS error of eps_hat and
    the share of x0_hat within CLOSE_LEVELS of x0. Why sampling takes many small steps, as a curve: at small t the
    noise is faint and hard to find, but x0_hat is nearly right; at large t it must be invented."""
    steps = np.unique(np.linspace(1, pipe.num_train_steps, CURVE_POINTS).round().astype(int))
    guess = guess_at(pipe, clean, steps, context)
    return {"t": steps, "noise_rmse": guess["noise_rmse"], "clean_close": guess["clean_close"]}


class GuessCurves:
    """guess_by_step per (sprite, context), kept for the last few: moving t then only moves the plot's marker."""

    def __init__(self, pipe: SpritePipeline, keep: int = 32):
        self.pipe, self.keep = pipe, keep
        self.cache: OrderedDict[tuple[str, str | None], dict[str, np.ndarray]] = OrderedDict()
        self.lock = threading.Lock()  # gradio runs events in threads

    def figure(self, clean: np.ndarray, t: int, context: str | None):
        """The guess_by_step figure for this (H, W, 3) uint8 sprite and context, marked at t."""
        key = (hashlib.sha256(clean.tobytes() + str(clean.shape).encode()).hexdigest(), context)
        with self.lock:
            curves = self.cache.get(key)
        if curves is None:
            curves = guess_by_step(self.pipe, clean, context)
            with self.lock:
                self.cache[key] = curves
                while len(self.cache) > self.keep:
                    self.cache.popitem(last=False)
        return guess_figure(curves, t, self.pipe.num_train_steps, CLOSE_LEVELS)
