"""diffusers' samplers (DPM-Solver++ 2M and its SDE twin, UniPC, Euler ancestral) inside SpritePipeline's loop."""

import numpy as np
import pytest
import torch

from model import SAMPLERS, SpritePipeline, build_unet, make_scheduler
from model.samplers import get_sampler

NAMES = ["hero", "non-hero", "food", "spell", "item"]
LIBRARY = [name for name, s in SAMPLERS.items() if not s.is_course_formula]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


def test_the_registry_holds_the_course_samplers_and_four_from_diffusers():
    assert list(SAMPLERS)[:2] == ["ddpm", "ddim"]
    assert {"dpm++2m", "dpm++2m-sde", "unipc", "euler-a"} <= set(LIBRARY)
    for sampler in SAMPLERS.values():
        assert sampler.label and sampler.hint and sampler.typical_steps >= 1
    with pytest.raises(ValueError, match="unknown sampler 'heun'; known samplers: ddpm, ddim, dpm\\+\\+2m"):
        get_sampler("heun")


@pytest.mark.parametrize("sampler", LIBRARY)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_each_sampler_runs_any_step_count_and_ends_on_sprites(pipe, sampler, steps):
    seen = list(pipe.denoise("hero", num_images=2, num_inference_steps=steps, sampler=sampler, seed=1))
    assert [s.index for s in seen] == list(range(steps))
    assert seen[0].timestep == 500  # "trailing": every sampler starts from pure noise at T
    assert all(1 <= s.timestep <= 500 for s in seen)
    assert [s.timestep for s in seen] == sorted((s.timestep for s in seen), reverse=True)
    final = seen[-1]
    assert final.sample.shape == final.predicted_clean.shape == (2, 3, 16, 16)
    assert torch.isfinite(final.sample).all()


@pytest.mark.parametrize("sampler", LIBRARY)
def test_streamed_samples_are_in_the_units_the_app_shows(pipe, sampler, monkeypatch):
    """Every streamed x_t is what the U-Net sees next, in DDPM's units, as DDPM's are; not Euler's own sigma
    units (x_t * sqrt(sigma^2 + 1), sigma up to 12.6 here), which would show as a saturated grid."""
    inputs = []
    predictor = pipe.noise_predictor
    monkeypatch.setattr(pipe, "noise_predictor", lambda x, t, c: inputs.append(x.clone()) or predictor(x, t, c))
    seen = list(pipe.denoise("hero", num_images=2, num_inference_steps=6, sampler=sampler, seed=1))
    for step, next_input in zip(seen, inputs[1:], strict=False):
        torch.testing.assert_close(step.sample, next_input)


@pytest.mark.parametrize("sampler", LIBRARY)
def test_a_seed_reproduces_and_another_seed_differs(pipe, sampler):
    first = pipe("food", num_images=2, num_inference_steps=7, sampler=sampler, seed=5).array
    again = pipe("food", num_images=2, num_inference_steps=7, sampler=sampler, seed=5).array
    other = pipe("food", num_images=2, num_inference_steps=7, sampler=sampler, seed=6).array
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("sampler", LIBRARY)
def test_context_and_guidance_change_the_sprites(pipe, sampler):
    def final(context, guidance):
        steps = pipe.denoise(context, num_images=2, num_inference_steps=5, sampler=sampler,
                             guidance_scale=guidance, seed=2)
        return list(steps)[-1].sample

    hero = final("hero", 1.0)
    assert not torch.allclose(hero, final("food", 1.0))
    assert not torch.allclose(hero, final("hero", 3.0))
    assert not torch.allclose(hero, final(None, 1.0))


def _diffusers_loop(pipe, scheduler, context, steps, seed, guidance):
    """The loop as diffusers' own pipelines write it, with the scheduler's set_timesteps/step and the U-Net."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(len(context), 3, 16, 16, generator=generator) * scheduler.init_noise_sigma
    stochastic = "generator" in scheduler.step.__code__.co_varnames
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(sample, t)
            conditional = pipe.unet(x, t, class_labels=context).sample
            unconditional = pipe.unet(x, t, class_labels=torch.zeros_like(context)).sample
            output = unconditional + guidance * (conditional - unconditional)
            extra = {"generator": generator} if stochastic else {}
            sample = scheduler.step(output, t, sample, **extra).prev_sample
    return sample


@pytest.mark.parametrize("sampler", LIBRARY)
@pytest.mark.parametrize(("steps", "guidance"), [(7, 1.0), (12, 2.5)])
def test_each_sampler_equals_a_plain_diffusers_loop_from_the_same_noise(pipe, sampler, steps, guidance):
    """Same noise from the same seed, the scheduler class built from the model's saved config: same sprites."""
    context = torch.eye(len(NAMES))[[0, 2, 4]]
    ours = list(pipe.denoise(context, num_images=3, num_inference_steps=steps, sampler=sampler,
                             guidance_scale=guidance, seed=11))[-1].sample
    scheduler = SAMPLERS[sampler].scheduler_class.from_config(pipe.scheduler.config,
                                                              **SAMPLERS[sampler].scheduler_options)
    plain = _diffusers_loop(pipe, scheduler, context, steps, 11, guidance)
    torch.testing.assert_close(ours, plain, atol=1e-4, rtol=1e-4)


def test_every_sampler_starts_from_the_same_noise(pipe):
    """One seed, one starting noise, so a side-by-side comparison is fair: the first x0 estimate is the same for
    every sampler. Euler ancestral works in sigma units; with "trailing" timesteps diffusers scales the start by
    sigma_max rather than sqrt(sigma_max^2 + 1), so its first U-Net input is the noise times 0.997."""
    firsts = {name: next(iter(pipe.denoise("hero", num_images=1, num_inference_steps=4, sampler=name, seed=9)))
              for name in SAMPLERS}
    reference = firsts["ddim"].predicted_clean
    for name, step in firsts.items():
        assert step.timestep == 500, name
        if name == "euler-a":
            gap = (step.predicted_clean - reference).norm() / reference.norm()
            assert gap < 0.01, name
        else:
            torch.testing.assert_close(step.predicted_clean, reference, atol=1e-4, rtol=1e-4, msg=name)


def test_the_course_samplers_are_still_the_formula(pipe):
    """DDPM and DDIM keep the course's update (SpritePipeline.denoise_step), not a diffusers scheduler."""
    assert SAMPLERS["ddpm"].is_course_formula and SAMPLERS["ddim"].is_course_formula
    with pytest.raises(ValueError, match="course's own update"):
        SAMPLERS["ddpm"].make_scheduler(pipe.scheduler.config)
