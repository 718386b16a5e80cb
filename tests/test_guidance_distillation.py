"""Guidance distillation: a U-Net that takes the guidance scale as an input and draws guided sprites in one pass."""

import pytest
import torch

from model import SpritePipeline, build_unet, load_pipeline, make_scheduler
from model.unet import guidance_weights, with_guidance_rows
from training.train import guided_target

NAMES = ["hero", "food", "spell"]
KNOTS = [1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    unet = build_unet(len(NAMES), "tiny").eval()
    with torch.no_grad():  # a fresh table is small; a trained one makes cond and uncond clearly apart
        unet.class_embedding.weight.mul_(20)
    return unet


def fixed_batch(rows: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    noisy = torch.randn(rows, 3, 16, 16, generator=generator)
    timestep = torch.linspace(20, 480, rows)
    context = torch.eye(len(NAMES))[torch.arange(rows) % len(NAMES)]
    return noisy, timestep, context


def test_guidance_weights_interpolate_between_the_two_nearest_scales():
    weights = guidance_weights(torch.tensor([1.0, 3.0, 3.25, 4.0]), KNOTS)
    assert weights.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0.75, 0.25], [0, 0, 0, 1]]


@torch.no_grad()
def test_the_student_starts_as_its_teachers_conditional_prediction(teacher):
    student = with_guidance_rows(teacher, len(KNOTS))
    assert type(student).__name__ == "UNet2DModel" and student.config.num_class_embeds == len(NAMES) + len(KNOTS)
    noisy, timestep, context = fixed_batch()
    conditional = teacher(noisy, timestep, class_labels=context).sample
    for scale in (1.0, 2.5, 4.0):
        rows = torch.cat([context, guidance_weights(torch.full((4,), scale), KNOTS)], dim=1)
        assert torch.allclose(student(noisy, timestep, class_labels=rows).sample, conditional, atol=1e-5)


@torch.no_grad()
def test_the_target_is_the_teachers_two_pass_guidance(teacher):
    noisy, timestep, context = fixed_batch(3)
    conditional = teacher(noisy, timestep, class_labels=context).sample
    unconditional = teacher(noisy, timestep, class_labels=torch.zeros_like(context)).sample
    assert not torch.allclose(conditional, unconditional, atol=1e-3)
    target = guided_target(teacher, noisy, timestep, context, torch.tensor([0.0, 1.0, 3.0]))
    assert torch.allclose(target[0], unconditional[0], atol=1e-5)
    assert torch.allclose(target[1], conditional[1], atol=1e-5)
    assert torch.allclose(target[2], unconditional[2] + 3 * (conditional[2] - unconditional[2]), atol=1e-4)


@pytest.fixture
def distilled(teacher):
    return SpritePipeline(with_guidance_rows(teacher, len(KNOTS)), make_scheduler(), NAMES, KNOTS)


def unet_calls(pipe: SpritePipeline, **kwargs) -> list[torch.Tensor]:
    """The context rows of every U-Net call while drawing."""
    seen, predict = [], pipe.noise_predictor
    pipe.noise_predictor = lambda sample, timestep, context: seen.append(context.clone()) or predict(
        sample, timestep, context)
    try:
        pipe("hero", num_images=2, num_inference_steps=3, sampler="ddim", seed=0, **kwargs)
    finally:
        pipe.noise_predictor = predict
    return seen


def test_a_distilled_pipeline_draws_guided_sprites_in_one_pass_unless_asked_for_two(distilled):
    one_pass = unet_calls(distilled, guidance_scale=2.5)
    assert len(one_pass) == 3 and all(c.shape == (2, 7) for c in one_pass)
    assert one_pass[0][0].tolist() == [1, 0, 0, 0, 0.5, 0.5, 0]  # hero, halfway between scales 2 and 3
    assert distilled.unet_rows(2, 2.5) == 2 and distilled.unet_rows(2, 2.5, two_pass_guidance=True) == 4

    two_pass = unet_calls(distilled, guidance_scale=2.5, two_pass_guidance=True)
    assert all(c.shape == (4, 7) for c in two_pass)  # conditional and unconditional rows, each at scale 1
    assert two_pass[0].tolist() == [[1, 0, 0, 1, 0, 0, 0]] * 2 + [[0, 0, 0, 1, 0, 0, 0]] * 2
    assert all(c.shape == (2, 7) for c in unet_calls(distilled))  # no guidance: scale 1, one pass
    assert all(c.shape == (4, 7) for c in unet_calls(distilled, guidance_scale=5.0))  # beyond its scales: two
    assert all(c.shape == (4, 7) for c in unet_calls(distilled, guidance_scale=0.5))  # below them: two
    unconditional = unet_calls(distilled, guidance_scale=0.0)  # uncond + 0 (cond - uncond): one pass, no context
    assert all(c.tolist() == [[0, 0, 0, 1, 0, 0, 0]] * 2 for c in unconditional)


def test_the_batcher_admits_the_rows_the_pipeline_runs(distilled):
    batcher = distilled.enable_batching(max_rows_in_flight=8)
    for kwargs, rows in [(dict(guidance_scale=2.5), 2), (dict(guidance_scale=2.5, two_pass_guidance=True), 4),
                         (dict(guidance_scale=0.0), 2), (dict(guidance_scale=5.0), 4)]:
        steps = distilled.denoise("hero", num_images=2, num_inference_steps=3, sampler="ddim", seed=0, **kwargs)
        next(steps)
        assert batcher.rows_in_flight == rows == distilled.unet_rows(2, kwargs["guidance_scale"],
                                                                     kwargs.get("two_pass_guidance", False))
        steps.close()
    assert batcher.rows_in_flight == 0


def test_the_guidance_scales_survive_a_save_and_a_load(distilled, tmp_path):
    distilled.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path)
    assert loaded.guidance_knots == KNOTS and loaded.context_names == NAMES
    a = distilled("food", num_images=2, num_inference_steps=4, guidance_scale=2.0, seed=3).array
    assert (a == loaded("food", num_images=2, num_inference_steps=4, guidance_scale=2.0, seed=3).array).all()


@pytest.mark.parametrize("knots, message", [
    ([1.0, 2.0], "the U-Net has 7 context embeddings but the model names 3 contexts (hero, food, spell) and 2"),
    ([1.0, 2.0, 4.0, 5.0], "guidance_knots must be at least two evenly spaced rising scales"),
    ([4.0, 3.0, 2.0, 1.0], "guidance_knots must be at least two evenly spaced rising scales"),
])
def test_bad_guidance_scales_are_named(teacher, knots, message):
    with pytest.raises(ValueError) as err:
        SpritePipeline(with_guidance_rows(teacher, 4), make_scheduler(), NAMES, knots)
    assert message in str(err.value)


def test_the_about_tabs_table_names_the_guidance_rows(distilled):
    from model.unet import describe_unet
    assert "a learned table of 3 rows, one per context, and 4 for the guidance scale" in describe_unet(
        distilled.unet, len(distilled.guidance_knots))
