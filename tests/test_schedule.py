"""The schedule and the sampling math against a float64 transcription of the course."""

import math
from itertools import pairwise

import pytest
import torch

from model import NUM_TRAIN_STEPS, NoiseSchedule, SpritePipeline, build_unet, make_scheduler, timestep_grid

NAMES = ["hero", "non-hero", "food", "spell", "item"]


def course_schedule(big_t=500, beta1=1e-4, beta2=0.02):
    """The course's b_t, a_t, ab_t (index 0..T), written out independently in float64."""
    b = [(beta2 - beta1) * i / big_t + beta1 for i in range(big_t + 1)]
    a = [1 - x for x in b]
    ab, log_sum = [], 0.0
    for x in a:
        log_sum += math.log(x)
        ab.append(math.exp(log_sum))
    ab[0] = 1.0
    return b, a, ab


def test_schedule_matches_course():
    _, _, ab = course_schedule()
    schedule = NoiseSchedule(make_scheduler())
    assert schedule.num_steps == NUM_TRAIN_STEPS
    assert schedule.alpha_bar[0] == 1.0
    ours = schedule.alpha_bar[1:]
    ref = torch.tensor(ab[1:], dtype=torch.float64)
    # The course starts its cumulative product at the unused b_0 = 1e-4; this is the only difference.
    assert torch.allclose(ours, ref, rtol=2e-4)
    assert abs(float(schedule.alpha_bar[500]) - 0.0063) < 2e-4


def test_grid_valid_for_every_step_count():
    schedule = NoiseSchedule(make_scheduler())
    for n in range(1, NUM_TRAIN_STEPS + 1):
        _check_grid(schedule, n)


def _check_grid(schedule, n):
    grid = timestep_grid(n)
    ts = [t for t, _ in grid] + [grid[-1][1]]
    assert len(grid) == n
    assert ts[0] == NUM_TRAIN_STEPS and ts[-1] == 0
    assert all(a > b for a, b in pairwise(ts)), "strictly decreasing"
    assert all(0 <= t <= NUM_TRAIN_STEPS for t in ts)
    assert all(prev == grid[i + 1][0] for i, (_, prev) in enumerate(grid[:-1])), "pairs chain"
    for t, t_prev in grid:
        s1, s2, s3 = schedule.ddpm_coefficients(t, t_prev)
        c_sample, c_noise = schedule.ddim_coefficients(t, t_prev)
        assert all(math.isfinite(v) and v > 0 for v in (s1, s2, s3, c_sample))
        assert math.isfinite(c_noise)


@pytest.mark.parametrize("n", [0, -1, 501])
def test_grid_rejects_out_of_range(n):
    with pytest.raises(ValueError, match="between 1 and 500"):
        timestep_grid(n)


def test_forward_process_uses_sqrt_one_minus_alpha_bar():
    schedule = NoiseSchedule(make_scheduler())
    _, _, ab = course_schedule()
    x0, noise = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 3, 16, 16)
    t = torch.tensor([0, 100, 250, 500])
    noisy = schedule.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        a = float(schedule.alpha_bar[ti])
        expected = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        assert torch.allclose(noisy[i], expected, atol=1e-6)
        assert abs(a - ab[ti]) / ab[ti] < 2e-4
    assert torch.equal(noisy[0], x0[0]), "t = 0 is the clean sprite"


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


def _reference_step(pipe, x_t, t, context, z):
    """The course's DDPM update in float64, from the pipeline's own x_t."""
    b, a, ab = course_schedule()
    # ab from the scheduler (the only schedule we have); b_t, a_t from it exactly as the course defines them
    ab_t = float(pipe.noise_schedule.alpha_bar[t])
    a_t = ab_t / float(pipe.noise_schedule.alpha_bar[t - 1])
    b_t = 1 - a_t
    assert abs(b_t - b[t]) / b[t] < 1e-3  # the same schedule as the course's, again
    with torch.no_grad():
        eps = pipe.unet(x_t, torch.tensor(t - 1), class_labels=context).sample.double()
    s1, s2, s3 = 1 / math.sqrt(a_t), (1 - a_t) / math.sqrt(1 - ab_t), math.sqrt(b_t)
    return s1 * (x_t.double() - s2 * eps) + s3 * z


@pytest.mark.slow  # 500 steps twice in float64
@pytest.mark.parametrize("add_noise", [True, False])
def test_ddpm_step_matches_float64_reference(pipe, add_noise):
    steps = []
    pipe("food", num_images=3, num_inference_steps=500, add_noise=add_noise, seed=7,
         callback=lambda i, t, x, x0: steps.append((t, x.clone())))
    # replay the pipeline's noise: the starting sample, then one draw per step except the last
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, 16, 16, generator=g)
    context = pipe.context_vector("food", 3)
    for t, after in steps:
        z = torch.randn(3, 3, 16, 16, generator=g).double() if add_noise and t > 1 else torch.zeros(1)
        expected = _reference_step(pipe, x, t, context, z)
        rel = (after.double() - expected).norm() / expected.norm()
        assert rel < 1e-5, f"t={t}: relative error {rel:.2e}"
        x = after


def test_same_seed_same_sprites_and_noise_off_draws_nothing_after_start(pipe):
    a = pipe("hero", num_images=4, num_inference_steps=50, seed=3).array
    b = pipe("hero", num_images=4, num_inference_steps=50, seed=3).array
    assert (a == b).all()
    g = torch.Generator().manual_seed(11)
    deterministic = pipe("hero", num_images=4, num_inference_steps=50, add_noise=False, generator=g)
    after_one_draw = torch.Generator().manual_seed(11)
    torch.randn(4, 3, 16, 16, generator=after_one_draw)
    assert torch.equal(g.get_state(), after_one_draw.get_state()), "no randomness after the starting noise"
    with_noise = pipe("hero", num_images=4, num_inference_steps=50, add_noise=True, seed=11)
    assert not (deterministic.array == with_noise.array).all()


@pytest.mark.slow  # 500 steps in float64
def test_noise_free_loop_matches_reference(pipe):
    """add_noise=False over all 500 steps equals the course's loop with z = 0, in float64."""
    _, _, ab_course = course_schedule()
    ab = pipe.noise_schedule.alpha_bar
    context = pipe.context_vector("spell", 2)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    for t in range(500, 0, -1):
        a_t = float(ab[t] / ab[t - 1])
        with torch.no_grad():
            eps = pipe.unet(x.float(), torch.tensor(t - 1), class_labels=context).sample.double()
        x = (x - (1 - a_t) / math.sqrt(1 - float(ab[t])) * eps) / math.sqrt(a_t)
    final = []
    pipe("spell", num_images=2, num_inference_steps=500, add_noise=False, seed=5,
         callback=lambda i, t, s, x0: final.append(s))
    rel = (final[-1].double() - x).norm() / x.norm()
    assert rel < 1e-4, f"relative error {rel:.2e}"


def test_ddim_single_step_returns_predicted_clean(pipe):
    steps = []
    pipe("item", num_images=2, num_inference_steps=1, sampler="ddim", seed=1,
         callback=lambda i, t, x, x0: steps.append((t, x, x0)))
    (t, x, x0), = steps
    assert t == 500
    assert torch.allclose(x, x0, atol=1e-5), "one DDIM step lands on x0_hat"


def test_strided_ddpm_uses_effective_beta(pipe):
    """With skipped steps, s3^2 is 1 - ab_t / ab_prev: the variance of the whole jump."""
    ab = pipe.noise_schedule.alpha_bar
    s1, s2, s3 = pipe.noise_schedule.ddpm_coefficients(500, 490)
    beta = 1 - float(ab[500] / ab[490])
    assert math.isclose(s3**2, beta, rel_tol=1e-12)
    assert math.isclose(s1, 1 / math.sqrt(1 - beta), rel_tol=1e-12)
    assert math.isclose(s2, beta / math.sqrt(1 - float(ab[500])), rel_tol=1e-12)


def test_step_table_writes_ddim_as_the_ddpm_update():
    """s1 * (x - s2 * eps) with the DDIM row equals c_sample * x + c_noise * eps; s3 = 0 adds no noise."""
    schedule = NoiseSchedule(make_scheduler())
    grid = timestep_grid(7)
    ddim, ddpm = schedule.step_table(grid, "ddim"), schedule.step_table(grid, "ddpm")
    x, eps = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for (t, t_prev), row, ddpm_row in zip(grid, ddim, ddpm, strict=True):
        c_sample, c_noise = schedule.ddim_coefficients(t, t_prev)
        s1, s2, s3, sqrt_ab, sqrt_one_minus_ab = row.tolist()
        assert torch.allclose(s1 * (x - s2 * eps), c_sample * x + c_noise * eps, atol=1e-12)
        assert s3 == 0
        assert ddpm_row[:3].tolist() == pytest.approx(schedule.ddpm_coefficients(t, t_prev), rel=1e-15)
        assert sqrt_ab**2 + sqrt_one_minus_ab**2 == pytest.approx(1)
        assert sqrt_ab**2 == pytest.approx(float(schedule.alpha_bar[t]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_an_exact_prediction_recovers_the_clean_sprite_for_either_prediction_type(prediction_type, tmp_path):
    """A v-prediction model's output is turned back into the noise before the course's update; given the
    exact target (noise, or v = sqrt(ab) noise - sqrt(1 - ab) x0), x0_hat is the clean sprite, and a step to
    t - 1 lands on the DDPM posterior mean."""
    pipe = SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(prediction_type=prediction_type), NAMES)
    pipe.save_pretrained(tmp_path)
    assert SpritePipeline.from_pretrained(tmp_path).predicts_velocity == (prediction_type == "v_prediction")
    schedule = pipe.noise_schedule
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 3, 16, 16, generator=generator, dtype=torch.float64)
    t = 300
    x_t = schedule.add_noise(x0, noise, t)
    target = noise if prediction_type == "epsilon" else schedule.velocity(x0, noise, t)
    pipe.noise_predictor = lambda sample, timestep, context: target
    row = schedule.step_table([(t, t - 1)], "ddpm")[0]
    sample, predicted_clean = pipe.denoise_step(x_t, torch.tensor(t - 1), torch.zeros(2, len(NAMES)), row,
                                                torch.zeros_like(x0))
    torch.testing.assert_close(predicted_clean, x0)
    ab, ab_prev = schedule.alpha_bar[t], schedule.alpha_bar[t - 1]
    beta = 1 - ab / ab_prev
    posterior_mean = (ab_prev.sqrt() * beta * x0 + (ab / ab_prev).sqrt() * (1 - ab_prev) * x_t) / (1 - ab)
    torch.testing.assert_close(sample, posterior_mean)


def test_make_scheduler_refuses_an_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction"):
        make_scheduler(prediction_type="sample")


@pytest.mark.parametrize(("sampler", "steps"), [pytest.param("ddpm", 500, marks=pytest.mark.slow), ("ddim", 50),
                                               ("ddim", 10)])
def test_a_stock_diffusers_loop_on_the_saved_model_draws_the_same_sprites(sampler, steps, tmp_path):
    """One truth with diffusers: the saved scheduler config, loaded into DDPMScheduler or DDIMScheduler, visits
    SpritePipeline's timesteps and, with the same noise, lands on the same sprites (float tolerance).

    DDPM with fewer steps visits the same timesteps too, but differs by design: diffusers' "fixed_large"
    re-adds noise of variance beta_t, one step's worth, while the course's s3 over a jump of several steps
    is that jump's beta, 1 - ab_t / ab_prev (docs/about.md), which keeps the variances consistent.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    from model import load_pipeline, unet_timestep

    torch.manual_seed(0)
    SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES).save_pretrained(tmp_path)
    pipe = load_pipeline(tmp_path)
    context = torch.eye(len(NAMES))[[0, 2, 4, 1]]
    ours = pipe(context, num_images=4, num_inference_steps=steps, sampler=sampler,
                generator=torch.Generator().manual_seed(3))

    scheduler = (DDPMScheduler if sampler == "ddpm" else DDIMScheduler).from_pretrained(tmp_path, subfolder="scheduler")
    for n in (steps, 50, 25, 10):
        scheduler.set_timesteps(n)
        assert scheduler.timesteps.tolist() == [unet_timestep(t) for t, _ in timestep_grid(n)]
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(4, 3, 16, 16, generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise = pipe.unet(sample, t, class_labels=context).sample
            sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
    stock = ((sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert abs(stock.astype(int) - ours.array.astype(int)).max() <= 1
