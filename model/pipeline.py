"""SpritePipeline: a scheduler, a context-conditioned U-Net, and a short sampling loop.

Shaped like diffusers' DDPMPipeline, plus what the course teaches: a context vector
(one-hot, mixed, or zero for unconditional), the DDPM update written as the formula,
a switch for noise re-adding, DDIM, classifier-free guidance, and per-step output.
Redrawing and repainting a sprite (model/editing.py) run through the same loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel
from PIL import Image

from .batching import ContinuousBatcher
from .deepcache import DeepCache, check_cacheable, split_forward
from .editing import PLAIN, EditPlan, SpriteEditing, StepCallback
from .fast import NoisePredictor, eager_predictor
from .results import ContextSpec, DenoiseStep, SpriteOutput
from .samplers import SAMPLERS, get_sampler
from .schedule import NoiseSchedule, timestep_grid, unet_timestep
from .speed import FastSampling
from .unet import attach_context_embedding, guidance_weights

MAX_IMAGES = 64  # per call; the app and the API share this limit
__all__ = ["MAX_IMAGES", "SAMPLERS", "DenoiseStep", "SpriteOutput", "SpritePipeline", "to_uint8"]
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class SpritePipeline(FastSampling, SpriteEditing, DiffusionPipeline):
    """Generate sprites for a context. ``context_names`` travels in model_index.json."""

    unet: UNet2DModel
    scheduler: DDPMScheduler

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, context_names: list[str] | None = None,
                 guidance_knots: list[float] | None = None):
        """guidance_knots: a guidance-distilled U-Net's scales (training/train.py --distill_guidance); its class
        table has a row for each after the contexts' rows, and it draws guided sprites in one pass."""
        super().__init__()
        knots = [float(k) for k in guidance_knots or ()]
        n = unet.config.num_class_embeds
        names = list(context_names) if context_names is not None else \
            [f"context {i}" for i in range((n or 0) - len(knots))]
        if n is None or n != len(names) + len(knots):
            raise ValueError(
                f"model config mismatch: the U-Net has {n} context embeddings but the model names "
                f"{len(names)} contexts ({', '.join(names)})" + (f" and {len(knots)} guidance scales" if knots else ""))
        if knots and (len(knots) < 2 or np.diff(knots).min() <= 0 or np.ptp(np.diff(knots)) > 1e-6):
            raise ValueError(f"guidance_knots must be at least two evenly spaced rising scales, got {knots}")
        self.register_modules(unet=attach_context_embedding(unet), scheduler=scheduler)
        self.register_to_config(context_names=names, guidance_knots=knots or None)
        self.noise_schedule = NoiseSchedule(scheduler)  # alpha_bar and the step table; self.scheduler is diffusers'
        self.predicts_velocity = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
        self.noise_predictor: NoisePredictor = eager_predictor(self.unet)
        self.split_forward = partial(split_forward, self.unet)  # DeepCache's U-Net: whole or outer blocks only
        self.step_function: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self.denoise_step
        self.compiled_batch_sizes: tuple[int, ...] = ()  # U-Net rows the compiled predictor serves
        self.compiling = False  # True while compile_in_background works
        self.compile_error: str | None = None  # why torch.compile failed here, if it did: sampling stays eager
        self.batcher: ContinuousBatcher | None = None  # set by enable_batching: requests in flight share U-Net calls
        self.engine = "torch"  # what runs the U-Net: enable_fast_sampling(engine="auto") may pick OpenVINO

    @property
    def context_names(self) -> list[str]:
        return list(self.config.context_names)

    @property
    def guidance_knots(self) -> list[float]:
        return list(self.config.get("guidance_knots") or ())

    def one_pass_guidance(self, guidance_scale: float) -> bool:
        """Whether this scale is drawn in one U-Net pass: a guidance-distilled model, within its scales."""
        knots = self.guidance_knots
        return bool(knots) and knots[0] <= guidance_scale <= knots[-1]

    def unet_rows(self, num_images: int, guidance_scale: float, two_pass_guidance: bool = False) -> int:
        """U-Net rows per step: two per sprite for the course's classifier-free guidance, else one."""
        one_pass = guidance_scale == 1.0 or (not two_pass_guidance and (
            guidance_scale == 0.0 or self.one_pass_guidance(guidance_scale)))
        return num_images * (1 if one_pass else 2)

    @property
    def num_train_steps(self) -> int:
        return self.noise_schedule.num_steps

    # ---- input checking ----------------------------------------------------------------
    def context_vector(self, context: ContextSpec | None, num_images: int) -> torch.Tensor:
        """Turn a name, a list of names or a weight vector into (num_images, C) float weights."""
        names = self.context_names
        if context is None:
            weights = np.zeros(len(names))
        elif isinstance(context, str) or (isinstance(context, Sequence) and context
                                          and all(isinstance(c, str) for c in context)):
            chosen = [context] if isinstance(context, str) else list(context)
            weights = np.zeros(len(names))
            for name in chosen:
                if name not in names:
                    raise ValueError(f"unknown context {name!r}; this model knows: {', '.join(names)}")
                weights[names.index(name)] = 1.0
        else:
            try:
                weights = np.asarray(context.cpu() if torch.is_tensor(context) else context, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"context must be a name, a list of names or a list of {len(names)} "
                                 f"numbers, got {context!r}") from None
        if weights.ndim == 0 or weights.shape[-1] != len(names) or weights.ndim > 2:
            raise ValueError(f"context weight vector must have {len(names)} entries "
                             f"({', '.join(names)}), got shape {tuple(weights.shape)}")
        if not np.isfinite(weights).all():
            raise ValueError("context weights must be finite numbers (no NaN or infinity)")
        if (weights < 0).any():
            raise ValueError("context weights must not be negative")
        if weights.ndim == 2 and weights.shape[0] != num_images:
            raise ValueError(f"got {weights.shape[0]} context rows for {num_images} images")
        weights = np.broadcast_to(weights, (num_images, len(names)))
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def check_inputs(self, num_images: int, num_inference_steps: int, sampler: str,
                     guidance_scale: float, noise_scale: float) -> None:
        """Raise ValueError with a plain message for anything the loop cannot run."""
        big_t = self.num_train_steps
        if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"num_images must be a whole number from 1 to {MAX_IMAGES}, got {num_images!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or not 1 <= num_inference_steps <= big_t:
            raise ValueError(f"num_inference_steps must be a whole number from 1 to {big_t}, "
                             f"got {num_inference_steps!r}")
        get_sampler(sampler)
        for name, value in (("guidance_scale", guidance_scale), ("noise_scale", noise_scale)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or not 0 <= value <= 20:
                raise ValueError(f"{name} must be a number from 0 to 20, got {value!r}")

    # ---- the reverse process -----------------------------------------------------------
    def predict_noise(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      predictor: NoisePredictor | None = None) -> torch.Tensor:
        """The U-Net's output for these rows, with one float timestep per row: the form a merged call of several
        requests takes, so one compiled shape serves requests alone and batched (the values are the same).
        predictor: this run's own (a DeepCache) instead of the shared one."""
        timestep = timestep.reshape(-1).to(torch.float32).expand(sample.shape[0]).contiguous()
        if self.guidance_knots and context.shape[-1] == len(self.context_names):
            context = self.with_guidance(context, 1.0)  # no guidance: a distilled model's rows at scale 1
        if predictor is not None:
            return predictor(sample, timestep, context)
        if self.batcher is not None:
            return self.batcher.predict(sample, timestep, context)
        return self.noise_predictor(sample, timestep, context)

    def with_guidance(self, context: torch.Tensor, guidance_scale: float | torch.Tensor) -> torch.Tensor:
        """(N, C) context weights -> (N, C + K): a guidance-distilled U-Net's input for that guidance scale."""
        scale = torch.as_tensor(guidance_scale, device=context.device).expand(context.shape[0])
        return torch.cat([context, guidance_weights(scale, self.guidance_knots).to(context.dtype)], dim=1)

    def guided_output(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      guidance: torch.Tensor | None = None, predictor: NoisePredictor | None = None) -> torch.Tensor:
        """The U-Net's output for x_t; with a guidance scale, pushed away from the unconditional (zero context)
        estimate: classifier-free guidance, uncond + scale * (cond - uncond)."""
        if guidance is None:
            return self.predict_noise(sample, timestep, context, predictor)
        timestep = timestep if timestep.numel() == 1 else torch.cat([timestep, timestep])  # one per row, or one
        both = self.predict_noise(torch.cat([sample, sample]), timestep,
                                  torch.cat([context, torch.zeros_like(context)]), predictor)
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def noise_and_clean(self, sample: torch.Tensor, output: torch.Tensor, sqrt_alpha_bar: torch.Tensor,
                        sqrt_one_minus_alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted noise, predicted clean sprite x0_hat) from the U-Net's output at x_t."""
        # A v-prediction model outputs v = sqrt(ab) noise - sqrt(1 - ab) x0; the noise is one line away.
        predicted_noise = sqrt_alpha_bar * output + sqrt_one_minus_alpha_bar * sample if self.predicts_velocity \
            else output
        predicted_clean = (sample - sqrt_one_minus_alpha_bar * predicted_noise) / sqrt_alpha_bar
        return predicted_noise, predicted_clean

    @torch.inference_mode()
    def predict_at(self, noisy: torch.Tensor, t: int | torch.Tensor,
                   context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One U-Net call on x_t at course step t (1..T; one for all rows, or one per row), no guidance:
        (predicted noise, predicted clean x0_hat). What the network makes of a noisy sprite in one go (the
        forward tab, studies/denoise_probe.py)."""
        t = torch.as_tensor(t)
        alpha_bar = self.noise_schedule.alpha_bar[t].float().reshape(-1, 1, 1, 1).to(noisy.device)
        output = self.predict_noise(noisy, unet_timestep(t).to(self.device, torch.float32), context)
        return self.noise_and_clean(noisy, output, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())

    def denoise_step(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                     coefficients: torch.Tensor, extra_noise: torch.Tensor,
                     guidance: torch.Tensor | None = None, predictor: NoisePredictor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDPM or DDIM step: predict the noise in x_t, then remove it. Returns (x_{t_prev}, x0_hat).

        coefficients: this step's row of NoiseSchedule.step_table (s1, s2, s3, sqrt(ab_t),
        sqrt(1 - ab_t)); they are tensors, not Python numbers, so a compiled step serves every t.
        guidance: None, or the classifier-free guidance scale.
        """
        output = self.guided_output(sample, timestep, context, guidance, predictor)
        s1, s2, s3, sqrt_alpha_bar, sqrt_one_minus_alpha_bar = coefficients.unbind()
        predicted_noise, predicted_clean = self.noise_and_clean(sample, output, sqrt_alpha_bar,
                                                                sqrt_one_minus_alpha_bar)
        # Re-adding noise (s3, extra_noise) keeps x on the distribution the net was trained on;
        # the loop passes zeros at the last step, in the "collapse" demonstration, and for DDIM.
        sample = s1 * (sample - s2 * predicted_noise) + s3 * extra_noise
        return sample, predicted_clean

    def denoise(self, context: ContextSpec | None = None, num_images: int = 16, num_inference_steps: int = 500,
                sampler: str = "ddpm", add_noise: bool = True, noise_scale: float = 1.0,
                guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                seed: int | None = None, two_pass_guidance: bool = False,
                cache_interval: int = 1) -> Iterator[DenoiseStep]:
        """Check the inputs now, then iterate over every step of sampling from pure noise.

        Arguments as in :meth:`__call__`.
        """
        self.check_inputs(num_images, num_inference_steps, sampler, guidance_scale, noise_scale)
        if isinstance(cache_interval, bool) or not isinstance(cache_interval, int) or cache_interval < 1:
            raise ValueError(f"cache_interval must be a whole number of at least 1, got {cache_interval!r}")
        if cache_interval > 1:
            check_cacheable(self.unet)
            if self.batcher is not None:
                raise ValueError("cache_interval keeps one request's deep features: not with batching")
        context_weights = self.context_vector(context, num_images)
        return self._reverse_process(context_weights, num_inference_steps, sampler, add_noise, noise_scale,
                                     guidance_scale, self._generator(generator, seed),
                                     two_pass_guidance=two_pass_guidance, cache_interval=cache_interval)

    @staticmethod
    def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
        """The given generator, else a CPU one from ``seed`` (None: torch's global one)."""
        if generator is None and seed is not None:
            return torch.Generator().manual_seed(int(seed))
        return generator

    def _reverse_process(self, context_weights: torch.Tensor, num_inference_steps: int, sampler: str,
                         add_noise: bool, noise_scale: float, guidance_scale: float,
                         generator: torch.Generator | None, plan: EditPlan = PLAIN,
                         two_pass_guidance: bool = False, cache_interval: int = 1) -> Iterator[DenoiseStep]:
        """The reverse loop below; with batching on, its U-Net calls merged with other requests' (admission
        happens here, so a full batcher refuses the request before its first step). A guidance-distilled model
        takes the scale as an input, one pass, unless ``two_pass_guidance`` asks for the course's two passes."""
        rows = self.unet_rows(context_weights.shape[0], guidance_scale, two_pass_guidance)
        if rows == context_weights.shape[0] and guidance_scale != 1.0:  # one pass stands in for the two
            context_weights = (torch.zeros_like(context_weights) if guidance_scale == 0.0  # uncond + 0 (cond - uncond)
                               else self.with_guidance(context_weights, guidance_scale))
            guidance_scale = 1.0
        steps = self._reverse_steps(context_weights, num_inference_steps, sampler, add_noise, noise_scale,
                                    guidance_scale, generator, plan, cache_interval)
        return steps if self.batcher is None else self.batcher.stream(steps, rows)

    @torch.inference_mode()
    def _reverse_steps(self, context_weights: torch.Tensor, num_inference_steps: int, sampler: str,
                       add_noise: bool, noise_scale: float, guidance_scale: float,
                       generator: torch.Generator | None, plan: EditPlan = PLAIN,
                       cache_interval: int = 1) -> Iterator[DenoiseStep]:
        """The one reverse loop. ``plan`` may start it part of the way down from a given sprite, run a hook after
        every step and jump back up the grid (model/editing.py); the default plan is plain sampling."""
        predictor = DeepCache(self.split_forward, cache_interval) if cache_interval > 1 else None
        step_function = self.step_function if predictor is None else partial(self.denoise_step, predictor=predictor)
        size = self.unet.config.sample_size
        shape = (context_weights.shape[0], 3, size, size)
        # Made in inference mode like every other input of the U-Net here, or a compiled U-Net would
        # recompile (a guard on the tensor's dispatch keys) at the first request without guidance.
        context_weights = context_weights.clone()
        guidance = None if guidance_scale == 1.0 else torch.tensor(guidance_scale, device=self.device)
        pinned = self.device.type == "cuda"  # lets the copy to the GPU run without waiting for it

        # Noise is drawn on the CPU so a seed gives the same sprites on every device.
        def gaussian(scale: float = 1.0) -> torch.Tensor:
            noise = torch.randn(shape, generator=generator, pin_memory=pinned)
            return (noise.mul_(scale) if scale != 1.0 else noise).to(self.device, non_blocking=True)

        if not get_sampler(sampler).is_course_formula:
            yield from self._scheduler_loop(sampler, gaussian, num_inference_steps, context_weights, guidance,
                                            generator, plan, predictor)
            return
        grid = plan.course_grid(timestep_grid(num_inference_steps, self.num_train_steps))
        # Per-step numbers go to the device once, as tables: no copy from the host in the loop.
        table = self.noise_schedule.step_table(grid, sampler).to(self.device, torch.float32)
        timesteps = torch.tensor([unet_timestep(t) for t, _ in grid], device=self.device)
        no_noise = torch.zeros(shape, device=self.device)
        level = grid[0][0] if grid else 0  # the course step the sample is at

        def noised_to(t: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda clean: clean if t == 0 else self.noise_schedule.add_noise(clean, gaussian(), t)

        sample = gaussian() if plan.clean is None else noised_to(level)(plan.clean)
        for index, position in enumerate(plan.visit_order(len(grid))):
            t, t_prev = grid[position]
            if t > level:  # a resampling jump: back up the grid by the forward process
                sample = self.noise_schedule.add_noise_between(sample, gaussian(), level, t)
            readd = sampler == "ddpm" and add_noise and t_prev > 0
            extra_noise = gaussian(noise_scale) if readd else no_noise
            sample, predicted_clean = step_function(sample, timesteps[position], context_weights,
                                                    table[position], extra_noise, guidance)
            if plan.after_step is not None:
                sample = plan.after_step(sample, t_prev, noised_to(t_prev))
            level = t_prev
            yield DenoiseStep(index, t, sample, predicted_clean)

    def _scheduler_loop(self, sampler: str, gaussian: Callable[[], torch.Tensor], num_inference_steps: int,
                        context_weights: torch.Tensor, guidance: torch.Tensor | None,
                        generator: torch.Generator | None, plan: EditPlan,
                        predictor: NoisePredictor | None = None) -> Iterator[DenoiseStep]:
        """A diffusers scheduler's loop, as in its own pipelines: scale the input, predict, ``scheduler.step``.

        A plan's start and hook work as in diffusers' img2img and inpainting pipelines: the timesteps at or
        below start_t, ``set_begin_index``, and ``scheduler.add_noise`` to noise in the scheduler's own units.
        """
        scheduler = get_sampler(sampler).make_scheduler(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        begin = 0 if plan.start_t is None else int((scheduler.timesteps > unet_timestep(plan.start_t)).sum())
        if hasattr(scheduler, "set_begin_index"):  # img2img-style starts; add_noise then uses the step index
            scheduler.set_begin_index(begin)
        timesteps = scheduler.timesteps[begin:]
        if plan.clean is None:
            sample = gaussian() * scheduler.init_noise_sigma  # the same starting noise as DDPM and DDIM, in its units
        elif len(timesteps):
            sample = scheduler.add_noise(plan.clean, gaussian(), timesteps[:1])
        else:
            return
        sqrt_alpha_bar = self.noise_schedule.alpha_bar.to(self.device, torch.float32).sqrt()
        sqrt_one_minus_alpha_bar = (1 - self.noise_schedule.alpha_bar.to(self.device, torch.float32)).sqrt()

        def noised(clean: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
            return scheduler.add_noise(clean, gaussian(), following) if len(following) else clean

        stochastic = not get_sampler(sampler).deterministic  # these draw noise in step(), from our generator
        for index, timestep in enumerate(timesteps):
            model_input = scheduler.scale_model_input(sample, timestep)  # x_t in the U-Net's (DDPM) units
            # Whole-numbered timesteps go in as integers like DDPM's, so a compiled U-Net serves every sampler.
            unet_t = timestep.to(torch.int64) if timestep == timestep.round() else timestep
            output = self.guided_output(model_input, unet_t, context_weights, guidance, predictor)
            t = int(timestep.round()) + 1  # course step of this timestep (unet_timestep's inverse)
            _, predicted_clean = self.noise_and_clean(model_input, output, sqrt_alpha_bar[t],
                                                      sqrt_one_minus_alpha_bar[t])
            extra = {"generator": generator} if stochastic else {}
            sample = scheduler.step(output, timestep, sample, **extra).prev_sample
            following = timesteps[index + 1:index + 2]  # the level just reached; none after the last step
            if plan.after_step is not None:
                t_prev = int(following.round()) + 1 if len(following) else 0
                sample = plan.after_step(sample, t_prev, partial(noised, following=following))
            # Shown as x_t in the U-Net's units, like DDPM's (Euler's own sample is x_t * sqrt(sigma^2 + 1)).
            shown = scheduler.scale_model_input(sample, following[0]) if len(following) else sample
            yield DenoiseStep(index, t, shown, predicted_clean)

    def __call__(self, context: ContextSpec | None = None, num_images: int = 16, num_inference_steps: int = 500,
                 sampler: str = "ddpm", add_noise: bool = True, noise_scale: float = 1.0,
                 guidance_scale: float = 1.0, generator: torch.Generator | None = None, seed: int | None = None,
                 callback: StepCallback | None = None, two_pass_guidance: bool = False,
                 cache_interval: int = 1) -> SpriteOutput:
        """Sample sprites.

        context: a context name, a list of names (mixed equally), a weight vector over
            ``context_names`` (e.g. ``[1, 0, 0.6, 0, 0]``), a (num_images, C) array, or None
            (zeros: unconditional).
        num_inference_steps: 1..T. DDPM with fewer than T steps uses a strided schedule.
        sampler: a name from model.samplers.SAMPLERS: "ddpm", "ddim" (deterministic, eta = 0), or one of
            diffusers' schedulers ("dpm++2m", "dpm++2m-sde", "unipc", "euler-a").
        add_noise: False switches off DDPM's noise re-adding (the course's collapse demonstration).
        noise_scale: multiplies DDPM's s3, the re-added noise.
        guidance_scale: classifier-free guidance against the zero context; 1 is off. A guidance-distilled model
            draws scales within its ``guidance_knots`` in one U-Net pass, unless ``two_pass_guidance`` asks for
            the course's two (conditional and unconditional).
        cache_interval: run the whole U-Net every this many steps and only its outer blocks in between, on the
            deep features kept from the last whole run (DeepCache, model/deepcache.py); 1 runs it at every step.
        generator / seed: where the noise comes from (seed is used when no generator is given).
        callback: called as callback(step_index, t, sample, predicted_clean) after every step.
        """
        steps = self.denoise(context, num_images, num_inference_steps, sampler, add_noise, noise_scale,
                             guidance_scale, generator, seed, two_pass_guidance, cache_interval)
        return self._collect(steps, callback, total=num_inference_steps)

    def _collect(self, steps: Iterator[DenoiseStep], callback: StepCallback | None,
                 unchanged: np.ndarray | None = None, total: int | None = None) -> SpriteOutput:
        """Run the steps (progress bar, callback) into sprites; ``unchanged`` is the result when there are none."""
        sample = None
        for step in self.progress_bar(steps, total=total):
            sample = step.sample
            if callback is not None:
                callback(step.index, step.timestep, step.sample, step.predicted_clean)
        array = unchanged if sample is None else to_uint8(sample)
        return SpriteOutput(images=[Image.fromarray(a) for a in array], array=array)
