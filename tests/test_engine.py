"""The optional OpenVINO engine: used where it is installed and faster, torch everywhere else."""

import sys
import time
import types

import numpy as np
import pytest
import torch

from model import SpritePipeline, build_unet, get_sampler, make_scheduler
from model.engine import calibration_inputs, fastest, openvino_predictor, race_engines
from model.unet import with_guidance_rows

NAMES = ["hero", "non-hero", "food", "spell", "item"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)


def test_without_openvino_torch_runs_the_unet_and_says_why(pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert openvino_predictor(pipe.unet) == (None, "OpenVINO is not installed (pip install openvino)")
    eager = pipe.noise_predictor
    predictor, engine = race_engines(pipe.unet, eager, [2])
    assert predictor is eager and engine == "torch (OpenVINO is not installed (pip install openvino))"


def test_a_failing_conversion_falls_back_to_torch_and_the_pipeline_still_draws(pipe, monkeypatch):
    def convert_model(*args, **kwargs):
        raise RuntimeError("unsupported operation aten::something\nand a long story")
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(convert_model=convert_model,
                                                                       Type=types.SimpleNamespace(f32="f32")))
    predictor, why = openvino_predictor(pipe.unet)
    assert predictor is None
    assert why == "OpenVINO could not convert the U-Net (RuntimeError: unsupported operation aten::something)"
    expected = pipe("food", num_images=2, num_inference_steps=3, seed=1).array
    try:
        pipe.enable_fast_sampling(compile=False, batch_sizes=[2, 4], engine="auto")
        assert pipe.engine.startswith("torch (OpenVINO could not convert the U-Net")
        assert np.array_equal(pipe("food", num_images=2, num_inference_steps=3, seed=1).array, expected)
    finally:
        pipe.disable_fast_sampling()


def test_the_race_keeps_the_faster_engine_at_each_size():
    def slow(sample, timestep, context):
        time.sleep(0.05)
        return sample

    def quick_at_4(sample, timestep, context):
        if sample.shape[0] != 4:
            time.sleep(0.1)
        return -sample
    predictor, winners = fastest({"slow": slow, "quick at 4": quick_at_4}, [2, 4],
                                 lambda rows: (torch.ones(rows, 1), torch.zeros(rows), torch.zeros(rows, 1)), calls=2)
    assert winners == {2: "slow", 4: "quick at 4"}
    assert predictor(torch.ones(4, 1), None, None).sum() == -4  # quick_at_4
    assert predictor(torch.ones(2, 1), None, None).sum() == 2  # slow
    assert predictor(torch.ones(3, 1), None, None).sum() == 3  # another size: the first candidate


def test_openvino_where_installed_gives_the_unets_output(pipe):
    pytest.importorskip("openvino")
    predictor, why = openvino_predictor(pipe.unet)
    assert why is None
    x, t, c = torch.randn(3, 3, 16, 16), torch.tensor([10.0, 200.0, 400.0]), torch.eye(5)[:3]
    with torch.no_grad():
        assert torch.allclose(predictor(x, t, c), pipe.unet(x, t, class_labels=c).sample, atol=1e-4)


def test_int8_without_calibration_and_an_unknown_precision_are_refused(pipe):
    with pytest.raises(ValueError, match="calibration"):
        openvino_predictor(pipe.unet, "int8")
    with pytest.raises(ValueError, match="fp16"):
        openvino_predictor(pipe.unet, "fp16")


def test_int8_without_nncf_says_why(pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace())  # installed, whatever it holds
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf now raises ImportError
    assert openvino_predictor(pipe.unet, "int8", calibration=[]) == (None, "int8 needs NNCF (pip install nncf)")


def test_calibration_inputs_are_noised_bundled_sprites_at_the_samplers_steps(pipe, monkeypatch):
    white = np.full((10, 16, 16, 3), 255, np.uint8), np.eye(5, dtype=np.float32)[np.arange(10) % 5], NAMES
    monkeypatch.setattr("model.sprites.default_sprites", lambda resolution: white)
    batches = calibration_inputs(pipe, "dpm++2m-sde", steps=4, rows=64)
    scheduler = get_sampler("dpm++2m-sde").make_scheduler(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    assert [float(t[0]) for _, t, _ in batches] == [float(t) for t in scheduler.timesteps]
    for sample, t, context in batches:
        assert sample.shape == (64, 3, 16, 16) and t.shape == (64,)
        assert context[:32].sum(1).tolist() == [1.0] * 32 and context[32:].abs().sum() == 0  # conditional, then not
        alpha_bar = float(pipe.scheduler.alphas_cumprod[int(t[0])])  # a white sprite is 1 everywhere
        assert float(sample.mean()) == pytest.approx(alpha_bar ** 0.5, abs=0.02)
        assert float(sample.std()) == pytest.approx((1 - alpha_bar) ** 0.5, abs=0.02)


def test_calibration_inputs_of_a_guidance_distilled_model_carry_its_scale_rows(monkeypatch):
    white = np.full((10, 16, 16, 3), 255, np.uint8), np.eye(5, dtype=np.float32)[np.arange(10) % 5], NAMES
    monkeypatch.setattr("model.sprites.default_sprites", lambda resolution: white)
    torch.manual_seed(0)
    student = SpritePipeline(with_guidance_rows(build_unet(len(NAMES), "tiny"), 3), make_scheduler(), NAMES,
                             guidance_knots=[1.0, 2.0, 3.0])
    for _, _, context in calibration_inputs(student, steps=2, rows=8):
        assert context.shape == (8, 8)
        assert context[:4, :5].sum(1).tolist() == [1.0] * 4 and context[4:, :5].abs().sum() == 0
        assert torch.allclose(context[:, 5:].sum(1), torch.ones(8))  # weights on the two nearest scale rows
        assert context[4:, 5].tolist() == [1.0] * 4  # the unconditional half at scale 1, as predict_noise feeds it
        assert len({tuple(row) for row in context[:4, 5:].tolist()}) == 4  # the conditional half at drawn scales
        student.unet(torch.zeros(8, 3, 16, 16), torch.zeros(8), class_labels=context)  # the U-Net takes them


def test_openvino_bf16_and_int8_where_installed_stay_near_the_unet(pipe):
    pytest.importorskip("openvino")
    x, t, c = torch.randn(4, 3, 16, 16), torch.tensor([10.0, 200.0, 400.0, 900.0]), torch.eye(5)[:4]
    with torch.no_grad():
        reference = pipe.unet(x, t, class_labels=c).sample
    predictor, why = openvino_predictor(pipe.unet, "bf16")
    if predictor is not None:
        assert (predictor(x, t, c) - reference).pow(2).mean().sqrt() < 0.02
    else:
        assert why == "this CPU has no bf16 instructions"
    pytest.importorskip("nncf")
    predictor, why = openvino_predictor(pipe.unet, "int8", calibration_inputs(pipe, steps=3, rows=8))
    assert why is None
    assert (predictor(x, t, c) - reference).pow(2).mean().sqrt() < 0.1


def test_use_engine_says_why_an_engine_cannot_run_and_keeps_the_unet_it_had(pipe, monkeypatch):
    """SpritePipeline.use_engine, the tools' --engine: a ValueError with OpenVINO's reason, nothing swapped."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    before = pipe.noise_predictor
    with pytest.raises(ValueError, match="OpenVINO is not installed"):
        pipe.use_engine("openvino-bf16")
    assert pipe.noise_predictor is before
