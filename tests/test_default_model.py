"""The bundled default model: loads with no network and no cache, and draws what is asked."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model import DEFAULT_MODEL_DIR, load_pipeline
from training.evaluate import default_judge_dir
from training.judge import judge_outputs, load_judge

pytestmark = pytest.mark.slow  # starts processes, servers, compiles or a browser: pytest -m 'not slow' skips it

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_model_loads_offline_with_an_empty_cache(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    code = ("from model import load_pipeline\n"
            "p = load_pipeline()\n"
            "out = p('food', num_images=2, num_inference_steps=5, sampler='ddim', seed=0)\n"
            "print(p.context_names, out.array.shape)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['hero', 'non-hero', 'food', 'spell', 'item'] (2, 16, 16, 3)" in result.stdout
    assert not any(tmp_path.rglob("*.safetensors")), "nothing was fetched into the cache"


def test_samples_land_in_the_requested_context_more_often_than_chance():
    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    judge, config = load_judge(default_judge_dir("default"))
    assert config["context_names"] == pipe.context_names
    per_context, names = 10, pipe.context_names
    requested = np.repeat(np.arange(len(names)), per_context)
    out = pipe(np.eye(len(names))[requested], num_images=len(requested), num_inference_steps=50, sampler="ddim",
               seed=0)
    predicted, _ = judge_outputs(judge, out.array)
    accuracy = float((predicted == requested).mean())
    chance = 1 / len(names)
    # 50 samples: at chance (0.2) the probability of scoring 0.5 or more is below 1e-5.
    assert accuracy >= 0.5, f"context accuracy {accuracy:.2f} against chance {chance:.2f}"


def test_the_bundled_models_guess_is_faint_noise_hard_and_the_sprite_easy_at_small_t():
    """The forward tab's curve on a real sprite: at t = 1 the noise is faint and hard to find, but x0_hat is
    nearly the sprite; at t = 500 the noise guess is good and x0_hat has to be invented."""
    from training.sprite_data import default_sprites
    from ui.forward import guess_by_step

    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    images, labels, names = default_sprites(16)
    picked = np.linspace(0, len(images) - 1, 8).astype(int)  # eight sprites across the set
    curves = [guess_by_step(pipe, images[i], names[int(labels[i].argmax())]) for i in picked]
    noise_rmse, clean_close = (np.mean([c[key] for c in curves], axis=0) for key in ("noise_rmse", "clean_close"))
    assert noise_rmse[0] > 2 * noise_rmse[-1]  # t = 1 against t = 500
    assert clean_close[0] > 0.9 > clean_close[-1]



def test_the_bundled_model_draws_its_teachers_guidance_in_one_pass():
    """The bundled model is model/teacher's guidance-distilled student. At the page's guidance 2, on 256 noisy
    training sprites, its one pass is nearer the teacher's two-pass guided prediction than the teacher's own
    conditional prediction (where the student started) is: under half of the gap guidance opens is left."""
    from model.loading import TEACHER_MODEL_DIR
    from studies.guidance_gap import fixed_batch, guided_and_gap, one_pass_error
    from ui.events import DEFAULT_GUIDANCE

    teacher, student = load_pipeline(TEACHER_MODEL_DIR), load_pipeline(DEFAULT_MODEL_DIR)
    assert not teacher.guidance_knots and student.one_pass_guidance(DEFAULT_GUIDANCE)
    assert student.unet_rows(16, DEFAULT_GUIDANCE) == 16 and teacher.unet_rows(16, DEFAULT_GUIDANCE) == 32
    batch = fixed_batch(teacher)
    guided, gap = guided_and_gap(teacher, batch, DEFAULT_GUIDANCE)
    error = one_pass_error(student, batch, guided, DEFAULT_GUIDANCE)
    assert error < 0.5 * gap, f"one pass against two: MSE {error:.5f}, {error / gap:.0%} of the gap guidance opens"
