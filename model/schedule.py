"""The noise schedule and the sampling math, in the course's notation.

Course time runs t = 0 (clean sprite) ... T (pure noise). ``alpha_bar[t]`` is the
share of the clean signal left at step t, with ``alpha_bar[0] = 1``. diffusers'
schedulers count timesteps from 0, so course step t is scheduler timestep t - 1;
:func:`unet_timestep` is the only place that converts.

Everything here is plain tensor arithmetic shared by training, the pipeline, the
app, the tests and the benchmarks.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from diffusers import DDPMScheduler

NUM_TRAIN_STEPS = 500
BETA_START = 1e-4
BETA_END = 0.02


def course_betas(num_steps: int = NUM_TRAIN_STEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END) -> torch.Tensor:
    """The course's linear betas for t = 1..T (its linspace includes an unused t = 0)."""
    b = (beta_end - beta_start) * torch.linspace(0, 1, num_steps + 1, dtype=torch.float64) + beta_start
    return b[1:]


PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_scheduler(num_steps: int = NUM_TRAIN_STEPS, prediction_type: str = "epsilon") -> DDPMScheduler:
    """A stock DDPMScheduler carrying the course's schedule, saved with the model.

    ``fixed_large`` (sigma^2 = beta_t) is the course's s3; no clipping. prediction_type says what the
    U-Net outputs: the noise ("epsilon", the course's) or v = sqrt(ab) noise - sqrt(1 - ab) x0
    (Salimans and Ho 2022), which the pipeline turns back into the noise before the update.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_steps,
        trained_betas=course_betas(num_steps).tolist(),
        variance_type="fixed_large",
        clip_sample=False,
        prediction_type=prediction_type,
        # A stock diffusers loop (set_timesteps(n), then step) then visits the timesteps SpritePipeline does
        # (499, 489, ..., 9 for n = 50; timestep_grid), so the saved model samples the same either way.
        timestep_spacing="trailing",
    )


def unet_timestep(t: int | torch.Tensor) -> int | torch.Tensor:
    """Course step t (1..T) -> the integer timestep a diffusers UNet is trained on (0..T-1)."""
    return t - 1


class NoiseSchedule:
    """alpha_bar on the course's 0..T grid (float64), read from a diffusers scheduler."""

    def __init__(self, scheduler: DDPMScheduler):
        cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
        self.num_steps = int(scheduler.config.num_train_timesteps)
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), cumprod])

    # ---- forward process -------------------------------------------------------------
    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise (the correct form; the course drops a sqrt)."""
        ab = self.alpha_bar.to(clean.device)[torch.as_tensor(t, device=clean.device)]
        ab = ab.to(clean.dtype).reshape(-1, *([1] * (clean.dim() - 1)))
        return ab.sqrt() * clean + (1 - ab).sqrt() * noise

    def add_noise_between(self, sample: torch.Tensor, noise: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        """x_{t_to} from x_{t_from} (t_from < t_to), the forward process over the gap (RePaint's jump back up):
        sqrt(ab_to / ab_from) x_from + sqrt(1 - ab_to / ab_from) noise."""
        alpha = float(self.alpha_bar[t_to] / self.alpha_bar[t_from])
        return alpha**0.5 * sample + (1 - alpha) ** 0.5 * noise

    def velocity(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The v-prediction target sqrt(ab_t) noise - sqrt(1 - ab_t) x_0."""
        ab = self.alpha_bar.to(clean.device)[torch.as_tensor(t, device=clean.device)]
        ab = ab.to(clean.dtype).reshape(-1, *([1] * (clean.dim() - 1)))
        return ab.sqrt() * noise - (1 - ab).sqrt() * clean

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """Signal-to-noise ratio ab_t / (1 - ab_t) at course step t (for min-SNR loss weighting)."""
        ab = self.alpha_bar.to(torch.as_tensor(t).device)[t]
        return ab / (1 - ab)

    # ---- reverse process -------------------------------------------------------------
    def ddpm_coefficients(self, t: int, t_prev: int) -> tuple[float, float, float]:
        """s1, s2, s3 of the DDPM update from step t to t_prev.

        With every step (t_prev = t - 1) these are the course's 1/sqrt(a_t),
        (1 - a_t)/sqrt(1 - ab_t) and sqrt(b_t). When steps are skipped, a_t and b_t
        become the effective values over the jump, ab_t / ab_prev and 1 - that, so
        the variances stay consistent with the skipped steps.
        """
        alpha = float(self.alpha_bar[t] / self.alpha_bar[t_prev])
        beta = 1.0 - alpha
        s1 = 1.0 / alpha**0.5
        s2 = beta / (1.0 - float(self.alpha_bar[t])) ** 0.5
        s3 = beta**0.5
        return s1, s2, s3

    def ddim_coefficients(self, t: int, t_prev: int) -> tuple[float, float]:
        """DDIM (eta = 0) as x_prev = c_sample * x_t + c_noise * eps_hat.

        x_prev = sqrt(ab_prev) * x0_hat + sqrt(1 - ab_prev) * eps_hat, with x0_hat expanded.
        """
        ab, ab_prev = float(self.alpha_bar[t]), float(self.alpha_bar[t_prev])
        c_sample = (ab_prev / ab) ** 0.5
        c_noise = (1 - ab_prev) ** 0.5 - c_sample * (1 - ab) ** 0.5
        return c_sample, c_noise

    def step_table(self, grid: list[tuple[int, int]], sampler: str = "ddpm") -> torch.Tensor:
        """(steps, 5) float64 rows s1, s2, s3, sqrt(ab_t), sqrt(1 - ab_t) for SpritePipeline.denoise_step.

        DDIM is the same update with s1 = c_sample, s2 = -c_noise / c_sample and s3 = 0:
        s1 * (x - s2 * eps) = c_sample * x + c_noise * eps.
        """
        rows = []
        for t, t_prev in grid:
            if sampler == "ddpm":
                s1, s2, s3 = self.ddpm_coefficients(t, t_prev)
            else:
                c_sample, c_noise = self.ddim_coefficients(t, t_prev)
                s1, s2, s3 = c_sample, -c_noise / c_sample, 0.0
            ab = float(self.alpha_bar[t])
            rows.append([s1, s2, s3, ab**0.5, (1 - ab) ** 0.5])
        return torch.tensor(rows, dtype=torch.float64)


def timestep_grid(num_inference_steps: int, num_train_steps: int = NUM_TRAIN_STEPS) -> list[tuple[int, int]]:
    """(t, t_prev) pairs from T down to the clean image, for any step count 1..T.

    t_i = floor(T * (n - i) / n) in exact integer arithmetic: spacing T/n >= 1 makes
    the grid strictly decreasing, it starts at T, and its last t_prev is 0 (the clean
    sprite). No index ever goes negative (the course's DDIM grid does, for n not
    dividing 500).
    """
    n, big_t = num_inference_steps, num_train_steps
    if not 1 <= n <= big_t:
        raise ValueError(f"num_inference_steps must be between 1 and {big_t}, got {n}")
    ts = [big_t * (n - i) // n for i in range(n)] + [0]
    return list(pairwise(ts))
