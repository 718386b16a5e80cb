"""Redraw (SDEdit) and inpaint (RePaint) through SpritePipeline's one reverse loop."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model import SAMPLERS, SpritePipeline, build_unet, fit_mask, fit_sprite, make_scheduler, timestep_grid
from model.editing import MAX_JUMP_SAMPLES
from training.sprite_data import fit_pixel_art

NAMES = ["hero", "non-hero", "food", "spell", "item"]
R = 16  # the tiny model's sprite size
COURSE = ["ddpm", "ddim"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    pipe = SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sprite():
    return np.random.default_rng(0).integers(0, 256, (R, R, 3), dtype=np.uint8)


@pytest.fixture
def mask():
    repaint = np.zeros((R, R), dtype=bool)
    repaint[4:11, 5:12] = True
    return repaint


def unet_inputs(pipe, monkeypatch):
    """Record every U-Net call's input (x_t in the U-Net's units) through the pipeline's noise predictor."""
    seen, predict = [], pipe.noise_predictor
    monkeypatch.setattr(pipe, "noise_predictor", lambda x, t, c: seen.append(x.clone()) or predict(x, t, c))
    return seen


# ---- redraw ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_strength_zero_returns_the_fitted_input_unchanged(pipe, sprite, sampler):
    out = pipe.redraw(sprite, "hero", strength=0, num_images=2, sampler=sampler, seed=0)
    assert np.array_equal(out.array, np.stack([sprite, sprite]))
    assert np.array_equal(np.asarray(out.images[1]), sprite)
    assert list(pipe.redraw_steps(sprite, strength=0, sampler=sampler)) == []
    upload = np.zeros((32, 32, 4), dtype=np.uint8)  # transparent, twice the size: fitted to white
    assert np.array_equal(pipe.redraw(upload, strength=0).array[0], np.full((R, R, 3), 255, np.uint8))


@pytest.mark.parametrize(("sampler", "steps", "guidance"), [("ddpm", 20, 1.0), ("ddim", 7, 2.0), ("euler-a", 7, 1.0),
                                                             ("dpm++2m", 9, 1.0)])
def test_strength_one_is_plain_sampling_with_the_same_seed(pipe, sprite, sampler, steps, guidance):
    settings = {"num_images": 2, "num_inference_steps": steps, "sampler": sampler, "guidance_scale": guidance,
                "seed": 4}
    redrawn = pipe.redraw(sprite, "food", strength=1.0, **settings).array
    assert np.array_equal(redrawn, pipe("food", **settings).array)


@pytest.mark.parametrize("sampler", COURSE)
@pytest.mark.parametrize(("strength", "steps"), [(0.5, 10), (0.3, 7), (0.77, 25), (0.1, 500), (0.05, 7)])
def test_redraw_runs_exactly_the_grid_steps_at_or_below_t0(pipe, sprite, sampler, strength, steps):
    t0 = round(strength * 500)
    seen = [s.timestep for s in pipe.redraw_steps(sprite, strength=strength, num_inference_steps=steps,
                                                  sampler=sampler, seed=0)]
    assert seen == [t for t, _ in timestep_grid(steps, 500) if t <= t0]


@pytest.mark.parametrize("sampler", ["euler-a", "unipc"])
@pytest.mark.parametrize(("strength", "steps"), [(0.5, 10), (0.3, 7)])
def test_redraw_with_a_diffusers_sampler_runs_its_timesteps_at_or_below_t0(pipe, sprite, sampler, strength, steps):
    scheduler = SAMPLERS[sampler].make_scheduler(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    expected = [int(t) + 1 for t in scheduler.timesteps if t + 1 <= round(strength * 500)]  # course steps
    seen = [s.timestep for s in pipe.redraw_steps(sprite, strength=strength, num_inference_steps=steps,
                                                  sampler=sampler, seed=0)]
    assert seen == expected and len(seen) < steps


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_redraw_starts_from_the_sprite_noised_with_the_seeds_first_draw(pipe, sprite, sampler, monkeypatch):
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps at the first step run, eps the generator's first draw (one per
    variation), whatever units the sampler keeps its sample in (Euler ancestral: sigmas)."""
    seen = unet_inputs(pipe, monkeypatch)
    first = next(iter(pipe.redraw_steps(sprite, strength=0.5, num_images=3, num_inference_steps=10,
                                        sampler=sampler, seed=8)))
    assert first.timestep == 250
    clean = torch.from_numpy(sprite).permute(2, 0, 1)[None].float() / 127.5 - 1
    noise = torch.randn((3, 3, R, R), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(seen[0], pipe.noise_schedule.add_noise(clean, noise, 250), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler-a"])
def test_redraw_reproduces_from_a_seed_and_its_variations_differ(pipe, sprite, sampler):
    def redraw(seed):
        return pipe.redraw(sprite, "spell", strength=0.6, num_images=3, num_inference_steps=10, sampler=sampler,
                           seed=seed).array

    first = redraw(5)
    assert np.array_equal(first, redraw(5))
    assert not np.array_equal(first, redraw(6))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


def test_redraw_reports_each_step_to_the_callback(pipe, sprite):
    seen = []
    pipe.redraw(sprite, strength=0.4, num_inference_steps=10, seed=0,
                callback=lambda i, t, x, x0: seen.append((i, t, tuple(x.shape))))
    assert seen == [(0, 200, (1, 3, R, R)), (1, 150, (1, 3, R, R)), (2, 100, (1, 3, R, R)), (3, 50, (1, 3, R, R))]


# ---- inpaint ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_inpaint_keeps_every_pixel_outside_the_mask_and_repaints_inside(pipe, sprite, mask, sampler):
    out = pipe.inpaint(sprite, mask, "hero", num_images=2, num_inference_steps=10, sampler=sampler, seed=1).array
    for variation in out:
        assert np.array_equal(variation[~mask], sprite[~mask])
        assert (variation[mask] != sprite[mask]).any(axis=-1).mean() > 0.5
    assert not np.array_equal(out[0], out[1])


def test_a_mask_drawn_on_the_enlarged_sprite_fits_the_sprite(pipe, sprite, mask):
    big_sprite = np.asarray(Image.fromarray(sprite).resize((4 * R, 4 * R), Image.NEAREST))
    big_mask = np.kron(mask, np.ones((4, 4))).astype(np.uint8) * 255
    small = pipe.inpaint(sprite, mask, num_inference_steps=5, seed=2).array
    assert np.array_equal(pipe.inpaint(big_sprite, big_mask, num_inference_steps=5, seed=2).array, small)


def test_inpaint_starts_from_plain_samplings_noise(pipe, sprite):
    """Everything masked and a deterministic sampler: nothing of the sprite is kept, so it is plain sampling."""
    everything = np.ones((R, R), dtype=bool)
    settings = {"num_images": 2, "num_inference_steps": 8, "sampler": "ddim", "seed": 3}
    assert np.array_equal(pipe.inpaint(sprite, everything, "item", **settings).array, pipe("item", **settings).array)


@pytest.mark.parametrize("sampler", COURSE)
def test_jumps_run_more_unet_calls_and_still_keep_the_outside(pipe, sprite, mask, sampler, monkeypatch):
    seen = unet_inputs(pipe, monkeypatch)
    plain = pipe.inpaint(sprite, mask, num_inference_steps=10, sampler=sampler, seed=7).array
    assert len(seen) == 10
    seen.clear()
    steps = list(pipe.inpaint_steps(sprite, mask, num_inference_steps=10, sampler=sampler, jump_length=2,
                                    jump_n_sample=3, seed=7))
    # Five stretches of two steps (counted from the clean end), each run three times.
    assert len(seen) == len(steps) == 30
    assert [s.timestep for s in steps[:8]] == [500, 450, 500, 450, 500, 450, 400, 350]
    assert [s.index for s in steps] == list(range(30)) and steps[-1].timestep == 50
    jumped = pipe.inpaint(sprite, mask, num_inference_steps=10, sampler=sampler, jump_length=2, jump_n_sample=3,
                          seed=7).array
    assert np.array_equal(jumped[0][~mask], sprite[~mask])
    assert not np.array_equal(jumped, plain)


def test_jumps_that_never_land_are_off(pipe, sprite, mask, monkeypatch):
    seen = unet_inputs(pipe, monkeypatch)
    pipe.inpaint(sprite, mask, num_inference_steps=6, jump_length=4, jump_n_sample=1, seed=0)  # r = 1: no repeat
    pipe.inpaint(sprite, mask, num_inference_steps=6, jump_length=0, jump_n_sample=5, seed=0)  # j = 0: no jump
    assert len(seen) == 12


# ---- fitting an upload -----------------------------------------------------------------------
def test_fit_sprite_uses_the_forward_tabs_fitting_and_its_fallback(sprite, monkeypatch):
    rgba = np.random.default_rng(1).integers(0, 256, (40, 24, 4), dtype=np.uint8)
    fitted = fit_sprite(rgba, R)
    assert np.array_equal(fitted, fit_pixel_art(Image.fromarray(rgba), R))
    assert np.array_equal(fit_sprite(Image.fromarray(sprite), R), sprite)
    monkeypatch.setitem(sys.modules, "training.sprite_data", None)  # as if the training package were absent
    assert np.array_equal(fit_sprite(rgba, R), fitted)  # shrinking: the same padding and area average


def test_fit_mask_takes_each_form_and_pads_like_the_image(mask):
    assert np.array_equal(fit_mask(mask, R), mask)
    for form in (mask.astype(np.uint8), mask.astype(np.int64), mask * 255, mask * np.uint8(200), mask * 0.9,
                 Image.fromarray(mask.astype(np.uint8) * 255), np.kron(mask, np.ones((3, 3), dtype=bool))):
        assert np.array_equal(fit_mask(form, R), mask)
    tall = np.zeros((2 * R, R), dtype=bool)  # the image's size: padded to a square on both sides, as the image is
    tall[-2:, :] = True
    expected = np.zeros((R, R), dtype=bool)
    expected[-1, R // 4:R // 4 + R // 2] = True
    assert np.array_equal(fit_mask(tall, R), expected)


# ---- bad input -------------------------------------------------------------------------------
def _bad_inputs():
    ok = {"sprite": np.zeros((R, R, 3), np.uint8), "mask": np.eye(R, dtype=bool)}
    return [
        ("redraw", {"image": np.zeros((R, R, 3), np.float32)}, "image must be a PIL image or an (H, W, 3)"),
        ("redraw", {"image": np.zeros((R, R), np.uint8)}, "image must be a PIL image or an (H, W, 3)"),
        ("redraw", {"image": np.zeros((R, R, 2), np.uint8)}, "got a uint8 array of shape (16, 16, 2)"),
        ("inpaint", {"image": "sprite.png"}, "image must be a PIL image or an (H, W, 3) or (H, W, 4) uint8 array"),
        ("redraw", {"strength": 1.5}, "strength must be a number from 0 to 1, got 1.5"),
        ("redraw", {"strength": -0.1}, "strength must be a number from 0 to 1"),
        ("redraw", {"strength": float("nan")}, "strength must be a number from 0 to 1"),
        ("redraw", {"strength": True}, "strength must be a number from 0 to 1"),
        ("redraw", {"num_images": 0}, "num_images must be a whole number from 1 to"),
        ("redraw", {"sampler": "heun"}, "unknown sampler 'heun'"),
        ("redraw", {"context": "dragon"}, "unknown context 'dragon'"),
        ("inpaint", {"mask": [[True]]}, "mask must be a PIL image or a 2-D array"),
        ("inpaint", {"mask": np.ones((R, R, 3), bool)}, "(16 x 16, or any size"),
        ("inpaint", {"mask": np.array([["a"]])}, "mask must be a PIL image or a 2-D array"),
        ("inpaint", {"mask": np.full((R, R), -1)}, "mask must be binary"),
        ("inpaint", {"mask": np.full((R, R), 300)}, "mask must be binary"),
        ("inpaint", {"mask": np.full((R, R), 2.0)}, "mask must be binary"),
        ("inpaint", {"mask": np.full((R, R), np.nan)}, "mask must be binary"),
        ("inpaint", {"mask": np.zeros((R, R), bool)}, "mask is empty: nothing to repaint"),
        ("inpaint", {"mask": np.full((R, R), 0.4)}, "mask is empty: nothing to repaint"),
        ("inpaint", {"jump_length": -1}, "jump_length must be a whole number from 0 to 10"),
        ("inpaint", {"jump_length": 11}, "jump_length must be a whole number from 0 to 10"),
        ("inpaint", {"jump_length": 2.5}, "jump_length must be a whole number"),
        ("inpaint", {"jump_n_sample": 0}, f"jump_n_sample must be a whole number from 1 to {MAX_JUMP_SAMPLES}"),
        ("inpaint", {"jump_n_sample": MAX_JUMP_SAMPLES + 1}, "jump_n_sample must be a whole number"),
        ("inpaint", {"sampler": "dpm++2m", "jump_length": 2, "jump_n_sample": 2},
         "resampling jumps (jump_length, jump_n_sample) work with the samplers ddpm, ddim"),
    ], ok


@pytest.mark.parametrize(("method", "kwargs", "message"), _bad_inputs()[0])
def test_bad_input_has_a_clear_message_before_any_step(pipe, method, kwargs, message):
    ok = _bad_inputs()[1]
    args = {"image": ok["sprite"], "num_inference_steps": 10, **({"mask": ok["mask"]} if method == "inpaint" else {}),
            **kwargs}
    with pytest.raises(ValueError) as err:
        getattr(pipe, f"{method}_steps")(**args)  # checked when called, not at the first step
    assert message in str(err.value)


def test_a_jump_back_up_is_the_forward_process_over_the_gap(pipe):
    """x_s -> x_t keeps sqrt(ab_t) of the clean sprite and brings the noise variance to 1 - ab_t."""
    schedule, clean = pipe.noise_schedule, torch.linspace(-1, 1, 12).reshape(1, 3, 2, 2)
    zeros = torch.zeros_like(clean)
    up = schedule.add_noise_between(schedule.add_noise(clean, zeros, 120), zeros, 120, 300)
    torch.testing.assert_close(up, schedule.add_noise(clean, zeros, 300))
    ab_s, ab_t = float(schedule.alpha_bar[120]), float(schedule.alpha_bar[300])
    variance = ab_t / ab_s * (1 - ab_s) + (1 - ab_t / ab_s)  # the old noise, carried up, plus the fresh noise
    assert variance == pytest.approx(1 - ab_t)
