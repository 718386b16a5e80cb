"""A walk between two contexts (model/walk.py), the page's Walk event and the walk study, on a tiny random model."""

import json
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import NAMES
from PIL import Image

import app
from model import SpritePipeline, build_unet, load_pipeline, make_scheduler
from model.walk import MAX_STOPS, context_walk, walk_sprites, walk_weights


@pytest.fixture(scope="module")
def pipe() -> SpritePipeline:
    torch.manual_seed(0)
    pipe = SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_walk_weights_go_from_start_to_end_in_even_steps():
    weights = walk_weights(np.array([1.0, 0, 0]), np.array([0, 0, 2.0]), 5)
    assert weights.shape == (5, 3)
    assert np.allclose(weights[0], [1, 0, 0]) and np.allclose(weights[-1], [0, 0, 2])
    assert np.allclose(weights[2], [0.5, 0, 1.0])
    assert np.allclose(np.diff(weights, axis=0), [-0.25, 0, 0.5])  # even steps
    for bad in (1, MAX_STOPS + 1):
        with pytest.raises(ValueError, match=f"stops must be a whole number from 2 to {MAX_STOPS}"):
            walk_weights(np.ones(3), np.zeros(3), bad)


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m-sde", "ddim"])  # noise re-added at every step, and not
def test_walk_ends_are_plain_sampling_from_the_same_seed(pipe, sampler):
    sampling = dict(num_inference_steps=4, sampler=sampler, guidance_scale=2.0)
    stops = list(context_walk(pipe, "hero", "food", stops=3, num_images=2, seed=5, **sampling))
    assert [w.tolist() for w, _ in stops] == [[1, 0, 0, 0, 0], [0.5, 0, 0.5, 0, 0], [0, 0, 1, 0, 0]]
    hero = pipe("hero", num_images=2, seed=5, **sampling).array
    food = pipe("food", num_images=2, seed=5, **sampling).array
    mixed = pipe([0.5, 0, 0.5, 0, 0], num_images=2, seed=5, **sampling).array
    for (_, got), want in zip(stops, (hero, mixed, food), strict=True):
        assert got.shape == (2, 16, 16, 3) and np.array_equal(got, want)
    assert not np.array_equal(hero, food)  # the context is the only difference, and it shows


def test_walk_to_unconditional_ends_at_zero_weights(pipe):
    weights = [w for w, _ in context_walk(pipe, "spell", None, stops=2, num_images=1, num_inference_steps=2)]
    assert np.allclose(weights[-1], 0) and np.allclose(weights[0], [0, 0, 0, 1, 0])


def test_walk_sprites_fill_columns_and_keep_the_size():
    columns = [np.full((2, 4, 4, 3), v, np.uint8) for v in (10, 20)]
    sprites = walk_sprites(columns, stops=3)
    assert sprites.shape == (6, 4, 4, 3)
    # reading order: row 0 is (stop 1, stop 2, blank), row 1 the same
    assert [int(s[0, 0, 0]) for s in sprites] == [10, 20, 224, 10, 20, 224]


@pytest.fixture(scope="module")
def events(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("walk-model")
    pipe.save_pretrained(folder)
    return app.SpriteApp(load_pipeline(folder), tmp_path_factory.mktemp("files"))


WALK = dict(start="hero", end="food", stops=3, num_images=2, num_inference_steps=4, sampler="DDIM",
            guidance_scale=2.0, seed=9, randomize_seed=False)


def test_walk_streams_a_column_per_stop(events):
    updates = list(events.walk(**WALK))
    assert len(updates) == 3
    sizes = {grid.size for grid, _, _ in updates}
    assert len(sizes) == 1  # the picture keeps its size while it fills in
    grid, caption, seed = updates[-1]
    assert seed == 9
    assert "Seed 9, 4 DDIM steps, guidance 2" in caption
    assert "[1, 0, 0, 0, 0] · [0.5, 0, 0.5, 0, 0] · [0, 0, 1, 0, 0]" in caption
    # The first column is what Generate draws for hero with the same settings.
    generated = list(events.generate(context="hero", num_inference_steps=4, sampler="DDIM", guidance_scale=2.0,
                                     num_images=2, seed=9))[-1][4]
    sheet = np.asarray(Image.open(generated))  # (16, 32, 3): the two sprites side by side
    pixels = np.asarray(grid)
    scale = pixels.shape[1] // (3 * 17 + 1)  # 3 stops of 16 pixels and 1 of padding, enlarged
    small = pixels[::scale, ::scale]  # back to one pixel per sprite pixel, 1-pixel padding included
    assert np.array_equal(small[1:17, 1:17], sheet[:, :16]) and np.array_equal(small[18:34, 1:17], sheet[:, 16:])


@pytest.mark.parametrize("change, words", [
    ({"start": "dragon"}, "start must be one of"),
    ({"end": None}, "end"),
    ({"stops": 1}, "Stops (stops) must be a whole number from 2 to"),
    ({"stops": 2.5}, "Stops"),
    ({"num_images": 9}, "Sprites per stop (num_images) must be a whole number from 1 to 8"),
    ({"sampler": "euler"}, "sampler"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
])
def test_walk_refuses_bad_input_with_a_clear_message(events, change, words):
    with pytest.raises(gr.Error) as caught:
        list(events.walk(**{**WALK, **change}))
    assert words in caught.value.message


# ---- studies/walk_study.py ---------------------------------------------------------------------

class MeanColourJudge(torch.nn.Module):
    """A judge with a known answer: class 0 when a sprite is dark on average, else class 2 ("food")."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # judge_outputs reads the device off a parameter

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))[:, None]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        dark = features[:, 0] < 0
        logits = torch.zeros(len(features), len(NAMES))
        logits[dark, 0], logits[~dark, 2] = 1.0, 1.0
        return logits


def test_walk_study_judges_every_stop_and_writes_its_figures(pipe, tmp_path, monkeypatch):
    from studies import walk_study
    from training.judge import judge_outputs

    judge = MeanColourJudge()
    evaluator = SimpleNamespace(names=NAMES, judge=judge, heldout_accuracy=dict.fromkeys(NAMES, 0.5))
    monkeypatch.setattr(walk_study, "load_pipeline", lambda model: pipe)
    monkeypatch.setattr(walk_study, "Evaluator", lambda *args, **kwargs: evaluator)
    results = walk_study.main(["--pairs", "hero:food", "--num_sprites", "70", "--stops", "3", "--steps", "2",
                               "--sampler", "ddim", "--out_dir", str(tmp_path)])
    assert json.loads((tmp_path / "walk_study.json").read_text()) == results
    rows = results["pairs"][0]["rows"]
    assert [r["end_weight"] for r in rows] == [0, 0.5, 1] and rows[1]["weights"] == [0.5, 0, 0.5, 0, 0]
    assert rows[0]["distance_from_first"] == 0 and rows[-1]["distance_from_first"] > 0
    # the shares are the judge's verdicts on the walk's sprites, recomputed here: 64 from seed 0, 6 from seed 1
    groups = [context_walk(pipe, "hero", "food", 3, n, seed, num_inference_steps=2, sampler="ddim",
                           guidance_scale=2.0) for n, seed in ((64, 0), (6, 1))]
    for row, (big, small) in zip(rows, zip(*groups, strict=True), strict=True):
        verdict = judge_outputs(judge, np.concatenate([big[1], small[1]]))[0]
        assert row["judged_start"] == pytest.approx(np.mean(verdict == 0))
        assert row["judged_end"] == pytest.approx(np.mean(verdict == 2))
    assert "| 0.50 |" in (tmp_path / "walk_study.md").read_text()
    with Image.open(tmp_path / "walk_study.png") as picture:
        assert picture.width > 300
    with pytest.raises(SystemExit):
        walk_study.main(["--pairs", "hero:dragon", "--out_dir", str(tmp_path)])
