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

