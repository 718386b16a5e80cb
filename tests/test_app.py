"""The Gradio app: event functions called directly, then the API of a launched app through gradio_client.

A tiny random model keeps this fast; the pictures are noise, but streaming, seeding, the
noise toggle, validation and the queue behave exactly as with the bundled model.
"""

import contextlib
import math
import re
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio import route_utils
from gradio_client import Client, handle_file
from matplotlib.figure import Figure
from PIL import Image

import app
import model.loading
from model import SpritePipeline, build_unet, load_pipeline, make_scheduler, to_uint8
from model.gallery import forward_noise, save_gif
from model.images import sprite_tensor
from ui import events as ui_events
from ui import gradio_fixes
from ui.forward import guess_by_step

NAMES = ["hero", "non-hero", "food", "spell", "item"]
FAST = dict(context="hero", weights="", num_inference_steps=8, sampler="DDPM", add_noise=True, noise_scale=1.0,
            guidance_scale=1.0, num_images=4, seed=7, randomize_seed=False)
COMPARE = {k: v for k, v in FAST.items() if k not in ("sampler", "add_noise")}

# (parameter, bad value, words the error must contain)
BAD_INPUTS = [
    ("num_inference_steps", 0, "num_inference_steps"),
    ("num_inference_steps", 501, "num_inference_steps"),
    ("num_inference_steps", 2.5, "whole number"),
    ("num_inference_steps", "50", "num_inference_steps"),
    ("num_inference_steps", None, "Steps (num_inference_steps) must be a whole number from 1 to 500, got nothing (an "
                                  "empty box)"),  # what the page sends for an emptied box (app.HEAD keeps it empty)
    ("guidance_scale", None, "Guidance scale (guidance_scale) must be a number from 0 to 20, got nothing"),
    ("seed", None, "Seed (seed) must be a whole number from 0 to 2147483647, got nothing"),
    ("num_inference_steps", math.nan, "num_inference_steps"),
    ("num_inference_steps", 10**30, "num_inference_steps"),
    ("num_images", 0, "num_images"),
    ("num_images", 65, "num_images"),
    ("num_images", True, "num_images"),
    ("sampler", "euler", "sampler"),
    ("sampler", ["DDPM"], "sampler"),
    ("context", "dragon", "context"),
    ("context", "x" * 10_000, "context"),
    ("context", 3, "context"),
    ("noise_scale", -1, "noise_scale"),
    ("noise_scale", math.inf, "noise_scale"),
    ("guidance_scale", 21, "guidance_scale"),
    ("guidance_scale", math.nan, "guidance_scale"),
    ("seed", -1, "seed"),
    ("seed", 2**40, "seed"),
    ("seed", "abc", "seed"),
    ("add_noise", "false", "add_noise"),
    ("randomize_seed", 1, "randomize_seed"),
]
BAD_WEIGHTS = [
    ("1, 0, 0", "5 weights"),
    ("1, 0, 0, 0, -1", "weights[4]"),
    ("1, 0, nan, 0, 0", "weights[2]"),
    ("a, b, c, d, e", "weights"),
    ([1, 0, 0, 0, 1e9], "weights[4]"),
    ("1," * 500, "too long"),
    ({"hero": 1}, "weights"),
]


def tiny_pipeline() -> SpritePipeline:
    torch.manual_seed(0)
    pipe = SpritePipeline(build_unet(len(NAMES), "tiny"), make_scheduler(), NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sprites(tiny_dir, tmp_path_factory):
    return app.SpriteApp(load_pipeline(tiny_dir), tmp_path_factory.mktemp("files"))


def final_sprites(outputs) -> np.ndarray:
    """The sprite sheet file of the last update, as pixels."""
    return np.asarray(Image.open(outputs[-1][4]))


# ---- event functions, called directly -------------------------------------------------------

def test_generate_streams_frames_then_the_final_sprites(sprites, monkeypatch):
    monkeypatch.setattr(ui_events, "LIVE_INTERVAL_S", 0.0)  # a live update for every GIF frame
    outputs = list(sprites.generate(**{**FAST, "num_inference_steps": 40}))
    assert len(outputs) == app.LIVE_FRAMES + 2  # 20 live frames, the final sprites, then the GIF and the sheet
    for current, predicted, final, gif, sheet, stats, seed in outputs[:-2]:
        assert current is not None and predicted is not None
        assert (final, gif, sheet) == (None, None, None)
        assert stats.startswith("Step ") and seed == 7
    shown_first, done = outputs[-2:]
    assert shown_first[2] is done[2] and shown_first[3:5] == (None, None) and shown_first[5] == done[5]
    current, predicted, final, gif, sheet, stats, seed = done
    assert final.width >= 400  # enlarged by a whole factor: crisp
    assert Image.open(sheet).size == (32, 32)  # 4 sprites, 2 x 2, native 16 px, no padding
    with Image.open(gif) as animation:
        assert animation.format == "GIF" and animation.n_frames == app.LIVE_FRAMES + 1
    assert "40 DDPM steps" in stats and "steps/s" in stats and seed == 7


def test_the_stats_line_says_how_many_u_net_passes_guidance_took(sprites, tmp_path):
    from model.unet import with_guidance_rows

    def stats(events, guidance):
        return list(events.generate(**{**FAST, "guidance_scale": guidance}))[-1][5]

    assert "guidance" not in stats(sprites, 1.0)
    assert stats(sprites, 2.0).endswith(" · guidance 2 in two U-Net passes")
    torch.manual_seed(0)
    student = SpritePipeline(with_guidance_rows(build_unet(len(NAMES), "tiny"), 3), make_scheduler(), NAMES,
                             guidance_knots=[1.0, 2.0, 3.0])
    distilled = app.SpriteApp(student, tmp_path)
    assert stats(distilled, 2.5).endswith(" · guidance 2.5 in one U-Net pass")
    assert stats(distilled, 4.0).endswith(" · guidance 4 in two U-Net passes")  # beyond its largest scale


def test_live_updates_come_no_more_often_than_an_eye_follows(sprites, monkeypatch):
    monkeypatch.setattr(ui_events, "LIVE_INTERVAL_S", 3600.0)
    outputs = list(sprites.generate(**{**FAST, "num_inference_steps": 40}))
    assert [o[5].split(":")[0] for o in outputs[:-2]] == ["Step 1 of 40"]  # the first step's frame, then none
    with Image.open(outputs[-1][3]) as animation:
        assert animation.n_frames == app.LIVE_FRAMES + 1  # the GIF still holds every frame


def test_the_gif_rests_on_the_sprites_as_pil_would_draw_them_and_keeps_every_frame(tmp_path):
    """save_gif: the frames on the way by the fast octree, the last as PIL's default median cut, to the pixel."""
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
    sprites = Image.fromarray(np.kron(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8)))
    path = save_gif([*noise, sprites.convert("RGBA")], tmp_path / "a.gif", frame_ms=50, hold_ms=900)
    with Image.open(path) as animation:
        decoded, durations = [], []
        for index in range(animation.n_frames):
            animation.seek(index)
            decoded.append(np.asarray(animation.convert("RGB"), dtype=float))
            durations.append(animation.info["duration"])
    assert len(decoded) == 4 and durations == [50, 50, 50, 900] and animation.info["loop"] == 0
    default = sprites.convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB")
    assert np.array_equal(decoded[-1], np.asarray(default, dtype=float))  # the resting frame: PIL's own
    for frame, source in zip(decoded[:-1], noise, strict=True):  # 256 colours for noise: close, not exact
        assert np.abs(frame - np.asarray(source, dtype=float)).mean() < 20


def test_first_update_comes_after_the_first_step(sprites):
    calls = []
    hook = sprites.pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = next(sprites.generate(**{**FAST, "num_inference_steps": 100}))
    finally:
        hook.remove()
    assert len(calls) == 1 and first[5] == "Step 1 of 100: t = 500"


def test_same_seed_same_sprites_and_noise_toggle_changes_them(sprites):
    once = final_sprites(list(sprites.generate(**FAST)))
    again = final_sprites(list(sprites.generate(**FAST)))
    other_seed = final_sprites(list(sprites.generate(**{**FAST, "seed": 8})))
    no_noise = final_sprites(list(sprites.generate(**{**FAST, "add_noise": False})))
    assert np.array_equal(once, again)
    assert not np.array_equal(once, other_seed)
    assert not np.array_equal(once, no_noise)


def test_randomised_seed_is_reported_and_reproduces(sprites):
    outputs = list(sprites.generate(**{**FAST, "seed": None, "randomize_seed": True}))
    seed = outputs[-1][6]
    assert 0 <= seed <= app.MAX_SEED and f"seed {seed}" in outputs[-1][5]
    again = list(sprites.generate(**{**FAST, "seed": seed}))
    assert np.array_equal(final_sprites(outputs), final_sprites(again))


@pytest.mark.parametrize("context, weights", [
    ("mixed", "1, 0, 0.6, 0, 0"), ("mixed", [1, 0, 0.6, 0, 0]), ("unconditional", "ignored"), ("FOOD", ""),
])
def test_context_choices(sprites, context, weights):
    outputs = list(sprites.generate(**{**FAST, "context": context, "weights": weights, "sampler": "ddim"}))
    assert outputs[-1][2] is not None


def test_mixed_weights_reach_the_model(sprites):
    hero = final_sprites(list(sprites.generate(**FAST)))
    as_mix = final_sprites(list(sprites.generate(**{**FAST, "context": "mixed", "weights": "1 0 0 0 0"})))
    mixed = final_sprites(list(sprites.generate(**{**FAST, "context": "mixed", "weights": "1 0 0.6 0 0"})))
    assert np.array_equal(hero, as_mix) and not np.array_equal(hero, mixed)


def test_mixing_panel_shows_the_context_vector():
    *weights, text, _ = app._one_hot("food", NAMES)
    assert weights == [0, 0, 1, 0, 0] and text == "0, 0, 1, 0, 0"
    assert app._one_hot("mixed", NAMES)[-1].open is True
    *weights, text, _ = app._one_hot("unconditional", NAMES)  # "none" shows the zeros the U-Net receives
    assert weights == [0, 0, 0, 0, 0] and text == "0, 0, 0, 0, 0"
    *sliders, picked = app._sliders_from_text("1, 0, 0.6, 0, 5", NAMES)  # typing moves the sliders
    assert sliders == [1, 0, 0.6, 0, 2] and picked == "mixed"
    assert app._sliders_from_text("1, 0", NAMES)[:5] == [gr.skip()] * 5


def test_controls_say_what_they_do(sprites, tmp_path):
    """Guidance's hint names what 0 does (the context is ignored), and stats count sprites in good English."""
    demo = app.build_demo(sprites.pipe, "", tmp_path)
    infos = [c["props"].get("info") or "" for c in demo.config["components"]
             if c["props"].get("label") == "Guidance scale"]
    assert len(infos) == 2 and all("0 ignores the context" in i and "1 is off" in i for i in infos)  # both tabs
    demo.close()
    one = list(sprites.generate(**{**FAST, "num_images": 1}))[-1][5]
    assert "1 sprite," in one and "1 sprites" not in one


@pytest.mark.parametrize("name, value, words", BAD_INPUTS)
def test_generate_refuses_bad_input_with_a_clear_message(sprites, name, value, words):
    with pytest.raises(gr.Error, match=re.escape(words)):
        next(sprites.generate(**{**FAST, name: value}))


@pytest.mark.parametrize("weights, words", BAD_WEIGHTS)
def test_generate_refuses_bad_weights(sprites, weights, words):
    with pytest.raises(gr.Error) as err:
        next(sprites.generate(**{**FAST, "context": "mixed", "weights": weights}))
    assert words in str(err.value)


def test_compare_runs_one_seed_with_and_without_noise(sprites):
    with_noise, without_noise, caption, seed = sprites.compare(**COMPARE)
    assert seed == 7 and "Same seed (7)" in caption
    assert with_noise.size == without_noise.size
    assert not np.array_equal(np.asarray(with_noise), np.asarray(without_noise))
    generated = list(sprites.generate(**FAST))[-1][2]
    assert np.array_equal(np.asarray(generated), np.asarray(with_noise))
    with pytest.raises(gr.Error, match="num_images"):
        sprites.compare(**{**COMPARE, "num_images": 1000})


def test_compare_samplers_streams_one_grid_per_sampler_from_one_seed(sprites):
    args = {k: COMPARE[k] for k in ("context", "weights", "num_inference_steps", "guidance_scale", "num_images",
                                    "seed", "randomize_seed")}
    chosen = ["DDIM", "DPM-Solver++ 2M", "unipc", "Euler ancestral"]  # labels or registry names
    updates = list(sprites.compare_samplers(**args, samplers=chosen))
    assert [len(gallery) for gallery, _ in updates] == [1, 2, 3, 4]  # streamed as each sampler finishes
    gallery, seed = updates[-1]
    assert seed == 7
    assert [caption.split(":")[0] for _, caption in gallery] == ["DDIM", "DPM-Solver++ 2M", "UniPC",
                                                                 "Euler ancestral"]
    assert all(caption.endswith(" s") and "8 steps" in caption for _, caption in gallery)
    # The DDIM grid is the one Generate draws with the same settings (same seed, same starting noise).
    ddim = list(sprites.generate(**{**FAST, "sampler": "DDIM"}))[-1][0]
    assert np.array_equal(np.asarray(gallery[0][0]), np.asarray(ddim.resize(gallery[0][0].size, Image.NEAREST)))
    assert not np.array_equal(np.asarray(gallery[0][0]), np.asarray(gallery[1][0]))
    for bad, words in (([], "samplers must be a list"), (["Heun"], "samplers must be one of"),
                       ("DDIM", "samplers must be a list")):
        with pytest.raises(gr.Error, match=words):
            list(sprites.compare_samplers(**args, samplers=bad))


@pytest.mark.parametrize("label", app.SAMPLER_LABELS)
def test_every_sampler_of_the_registry_runs_from_the_page(sprites, label):
    outputs = list(sprites.generate(**{**FAST, "sampler": label, "num_inference_steps": 3}))
    assert f"3 {label} steps" in outputs[-1][5]
    assert app.sampler_hint(label).strip("*")


def test_schedule_plot_marks_the_timestep(sprites):
    figure = sprites.schedule_plot(100)
    shares, snr = figure.axes[:2]
    for axis in (shares, snr):
        marker = [line for line in axis.lines if line.get_linestyle() == "--"]
        assert len(marker) == 1 and list(marker[0].get_xdata()) == [100, 100]
    assert "t = 100" in shares.get_title()
    signal = shares.lines[0].get_ydata()
    assert signal[0] == 1.0 and signal[-1] < 0.1 and np.all(np.diff(signal) < 0)
    with pytest.raises(gr.Error, match="t must be"):
        sprites.schedule_plot(501)


def test_forward_process_tab(sprites):
    sprite = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    clean, strip, formula = sprites.forward(sprite, 0)
    assert np.array_equal(np.asarray(clean)[::16, ::16], sprite)  # t = 0 is the sprite itself
    assert [caption for _, caption in strip] == ["t = 0", "t = 100", "t = 250", "t = 500"]
    assert "1.000\\,x_0 + 0.000" in formula
    noisy, _, formula = sprites.forward(sprite, 500)
    assert np.abs(np.asarray(noisy).astype(int) - np.asarray(clean)).mean() > 30
    assert "0.079\\,x_0" in formula  # sqrt(alpha_bar_500)
    big = np.kron(sprite, np.ones((4, 4, 1), np.uint8))  # an upload at 4x is read back exactly
    assert np.array_equal(np.asarray(sprites.forward(big, 0)[0]), np.asarray(clean))
    assert sprites.forward(None, 100)[0] is None
    for bad in (-1, 501, 2.5, math.nan, "abc"):
        with pytest.raises(gr.Error, match="t must be"):
            sprites.forward(sprite, bad)


def test_the_networks_guess_on_the_forward_tab(sprites, monkeypatch):
    sprite = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    noise = forward_noise((3, 16, 16))  # the forward tab's eps
    shown_noise, guessed_noise, guessed_clean, caption = sprites.predict(sprite, 250, "food")
    assert np.array_equal(np.asarray(shown_noise)[::16, ::16], to_uint8(noise[None] * 0.5)[0])
    assert "t = 250, told *food*" in caption and "RMS error of the predicted noise" in caption
    # the pictures are the pipeline's one-step guess on the tab's x_t
    noisy = sprites.pipe.noise_schedule.add_noise(sprite_tensor(sprite), noise[None], 250).float()
    eps_hat, x0_hat = sprites.pipe.predict_at(noisy, 250, sprites.pipe.context_vector("food", 1))
    assert np.array_equal(np.asarray(guessed_noise)[::16, ::16], to_uint8(eps_hat * 0.5)[0])
    assert np.array_equal(np.asarray(guessed_clean)[::16, ::16], to_uint8(x0_hat)[0])

    # A network that finds the noise exactly gives the sprite back, at every t, and the caption says so.
    seen = []

    def oracle(sample, timestep, context):
        seen.append((float(timestep), context.tolist()))
        return noise[None].expand_as(sample).to(sample.dtype)

    monkeypatch.setattr(sprites.pipe, "predict_noise", oracle)
    for t in (1, 250, 500):
        _, _, guessed_clean, caption = sprites.predict(sprite, t, "unconditional")
        assert np.array_equal(np.asarray(guessed_clean)[::16, ::16], sprite)
        assert "told no context" in caption and "**0.00**" in caption and "**100%**" in caption
    assert seen == [(0.0, [[0.0] * 5]), (249.0, [[0.0] * 5]), (499.0, [[0.0] * 5])]  # the UNet's t - 1

    assert sprites.predict(sprite, 0)[:3] == (None, None, None)  # nothing to find at t = 0
    assert sprites.predict(None, 100)[3] == "Pick a sprite or upload an image."
    with pytest.raises(gr.Error, match="context must be one of"):
        sprites.predict(sprite, 100, "dragon")
    with pytest.raises(gr.Error, match="t must be"):
        sprites.predict(sprite, 501)


def test_the_guess_at_every_t_is_one_call_per_sprite_and_context(sprites, monkeypatch):
    sprite = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    # the curve's point at t is the guess the caption above it reports at t (the same eps, the same network)
    curves = guess_by_step(sprites.pipe, sprite, "food")
    assert curves["t"][0] == 1 and curves["t"][-1] == 500 and np.all(np.diff(curves["t"]) > 0)
    caption = sprites.predict(sprite, int(curves["t"][5]), "food")[3]
    assert f"**{curves['noise_rmse'][5]:.2f}**" in caption and f"**{curves['clean_close'][5]:.0%}**" in caption

    noise = forward_noise((3, 16, 16))
    calls = []

    def oracle(sample, timestep, context):  # finds the noise exactly: every t gives the sprite back
        calls.append((timestep.tolist(), context.tolist()))
        return noise[None].expand_as(sample).to(sample.dtype)

    monkeypatch.setattr(sprites.pipe, "predict_noise", oracle)
    sprites.guess_curves.cache.clear()
    figure = sprites.guess_plot(sprite, 250, "unconditional")
    assert isinstance(figure, Figure)
    (timesteps, contexts), = calls  # one U-Net call, a row per t (the UNet's t - 1), no context told
    assert timesteps == [float(t - 1) for t in curves["t"]] and contexts == [[0.0] * 5] * len(curves["t"])
    noise_axes, clean_axes = figure.axes
    assert np.allclose(noise_axes.lines[0].get_ydata(), 0, atol=1e-5)
    assert np.array_equal(clean_axes.lines[0].get_ydata(), np.ones(len(curves["t"])))
    assert noise_axes.lines[-1].get_xdata()[0] == 250  # the marker at the tab's t

    sprites.guess_plot(sprite, 400, "unconditional")  # moving t: the marker only
    assert len(calls) == 1
    sprites.guess_plot(sprite, 400, "food")  # another context: a new curve
    assert len(calls) == 2 and calls[1][1][0] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert sprites.guess_plot(None, 100) is None
    with pytest.raises(gr.Error, match="t must be"):
        sprites.guess_plot(sprite, -1)


def test_uploads_that_are_not_sprites_get_one_plain_message(sprites, tmp_path):
    """Files as the page uploads them (gradio's file dict, opened by the event): the message names the problem,
    never a server path; a readable upload of any size is fitted to the model's resolution."""
    huge = tmp_path / "huge.png"
    Image.new("P", (3000, 3000)).save(huge, optimize=True)  # a small file holding a huge blank canvas
    assert huge.stat().st_size < 100_000
    tall = tmp_path / "tall.png"
    Image.new("RGB", (100, 50_000)).save(tall)
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), "red").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    for path, words in ((huge, "image too large: at most 2048 x 2048"), (tall, "got 5,000,000 pixels"),
                        (fake, "not an image"), (truncated, "not an image")):
        with pytest.raises(gr.Error) as err:
            sprites.forward({"path": str(path), "meta": {"_type": "gradio.FileData"}}, 100)
        assert words in err.value.message and str(tmp_path) not in err.value.message
    with pytest.raises(gr.Error, match="must be an image file"):
        sprites.forward({"url": "http://example.invalid/x.png"}, 100)
    for size in ((1, 1), (64, 64), (37, 5)):
        small = tmp_path / f"{size}.png"
        Image.new("RGBA", size, (200, 30, 30, 255)).save(small)
        clean = sprites.forward({"path": str(small)}, 0)[0]
        assert clean.size == (16 * 16, 16 * 16)  # the model's 16 px, enlarged 16x


def test_dataset_examples_feed_the_forward_tab(sprites):
    if sprites.examples is None:
        pytest.skip("the bundled dataset (data/sprites_dcss.npz) is not available")
    assert sprites.examples.shape[1:] == (16, 16, 3)
    assert set(sprites.example_captions) == set(NAMES)
    picked = sprites.pick_example(gr.SelectData(None, {"index": 3, "value": None}))
    assert np.array_equal(np.asarray(picked)[::16, ::16], sprites.examples[3])
    assert sprites.example_context(gr.SelectData(None, {"index": 3, "value": None})) == sprites.example_captions[3]


def test_model_source_falls_back_to_the_bundled_model_and_says_so(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model.loading, "DEFAULT_MODEL_DIR", tiny_dir)
    monkeypatch.delenv("MODEL_ID", raising=False)
    assert app.load_model()[1] == "**Model:** the bundled default."

    monkeypatch.setenv("MODEL_ID", str(tiny_dir))
    monkeypatch.setenv("MODEL_REVISION", "v1")
    assert app.load_model()[1] == f"**Model:** `{tiny_dir}` at revision `v1`."

    # An unreachable Hub (offline, empty cache) and malformed or missing sources all fall back.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    for source in ("someone/sprite-model", "not a repo id!", str(tmp_path / "missing")):
        monkeypatch.setenv("MODEL_ID", source)
        pipe, note = app.load_model()
        assert note.startswith("⚠️ **Could not load MODEL_ID:**") and "bundled model instead" in note
        assert pipe.context_names == NAMES
        assert "Running the bundled model instead" in capsys.readouterr().out  # the terminal says so too
    demo = app.build_demo(pipe, note, tmp_path / "files")
    shown = [c["props"].get("value") for c in demo.config["components"] if c["type"] == "markdown"]
    assert any("Could not load MODEL_ID" in str(v) for v in shown)
    demo.close()


@pytest.mark.slow
def test_bundled_model_with_the_page_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("MODEL_ID", raising=False)
    try:
        assert isinstance(app.demo, gr.Blocks)  # what `gradio app.py` and Spaces tools import
    finally:
        vars(app).pop("demo", None)
    pipe, note = app.load_model()
    assert note == "**Model:** the bundled default." and pipe.context_names == NAMES
    outputs = list(app.SpriteApp(pipe, tmp_path).generate(seed=1))  # the defaults the page starts with
    assert Image.open(outputs[-1][4]).size == (64, 64)
    assert f"{app.DEFAULT_STEPS} {app.DEFAULT_SAMPLER} steps" in outputs[-1][5]


# ---- the launched app, through gradio_client ----------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    demo = app.build_demo(load_pipeline(tiny_dir), "**Model:** tiny test model.")
    _, url, _ = app.launch(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server[1], download_files=str(tmp_path_factory.mktemp("downloads")), analytics_enabled=False,
                  verbose=False)


def call(client, **changes):
    job = client.submit(**{**FAST, **changes}, api_name="/generate")
    updates = list(job)
    return updates, job.outputs()


@pytest.mark.slow
def test_api_lists_named_endpoints(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/generate", "/compare", "/compare_samplers", "/walk", "/forward", "/predict", "/redraw",
                        "/inpaint"}
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == list(FAST)
    for name in ("/generate", "/compare", "/compare_samplers", "/walk", "/redraw", "/inpaint"):
        defaults = {p["parameter_name"]: p.get("parameter_default") for p in api[name]["parameters"]}
        assert defaults["randomize_seed"] is False, name  # predict(seed=42) means seed 42
    compare = {p["parameter_name"]: p.get("parameter_default") for p in api["/compare"]["parameters"]}
    generate = {p["parameter_name"]: p.get("parameter_default") for p in api["/generate"]["parameters"]}
    # the noise on/off comparison has DDPM steps of its own, not the page's few fast-sampler steps
    assert compare["num_inference_steps"] == app.COMPARE_STEPS != generate["num_inference_steps"]
    unnamed = [(name, r["label"]) for name, e in api.items() for r in e["returns"] if r["label"].startswith("value_")]
    assert not unnamed  # every output has a name in view_api


@pytest.mark.slow
def test_api_streams_before_the_final_result(client):
    submitted = time.perf_counter()
    job = client.submit(**{**FAST, "num_inference_steps": 120}, api_name="/generate")
    arrivals = []
    for update in job:
        arrivals.append((time.perf_counter(), job.done(), update))
    first_time, done_at_first, first = arrivals[0]
    assert 3 <= len(arrivals) <= app.LIVE_FRAMES + 2 and not done_at_first  # live frames, final sprites, files
    assert first[0] is not None and first[2] is None  # a live frame, no final sprites yet
    # It really came before, not in one burst at the end: the updates spread over most of the request's time
    # (a share, not seconds, so a fast machine passes too).
    assert arrivals[-1][0] - first_time > 0.3 * (arrivals[-1][0] - submitted)
    sprites_shown, final = arrivals[-2][2], arrivals[-1][2]
    assert Path(sprites_shown[2]).is_file() and sprites_shown[3] is None  # the final sprites come first
    assert Path(final[2]).is_file() and Path(final[3]).suffix == ".gif" and Path(final[4]).suffix == ".png"


@pytest.mark.slow
def test_api_same_seed_same_sprites_noise_off_differs(client):
    once, again = call(client)[1], call(client)[1]
    no_noise = call(client, add_noise=False)[1]
    assert np.array_equal(final_sprites(once), final_sprites(again))
    assert not np.array_equal(final_sprites(once), final_sprites(no_noise))


@pytest.mark.slow
def test_api_bad_input_gets_an_error_and_the_server_keeps_answering(client, capfd):
    cases = [(name, value, words) for name, value, words in BAD_INPUTS if not isinstance(value, float)
             or math.isfinite(value)]  # NaN and infinity are not JSON: the client cannot send them
    cases += [("weights", w, words) for w, words in BAD_WEIGHTS[:3]]
    for name, value, words in cases:
        extra = {"context": "mixed"} if name == "weights" else {}
        with pytest.raises(Exception, match=re.escape(words)):
            client.predict(**{**FAST, **extra, name: value}, api_name="/generate")
    assert "Traceback" not in capfd.readouterr().err  # our checks: a user's mistake is not a server fault
    with pytest.raises(Exception, match="t must be a whole number from 0 to 500"):
        client.predict(sprite=None, t=-5, api_name="/forward")
    assert Path(client.predict(**FAST, api_name="/generate")[2]).is_file()


@pytest.mark.slow
def test_api_examples_are_files_on_this_machine_and_work(server, client):
    """The API page's and view_api's example for a picture input was a picture on the web: offline, nothing."""
    info = httpx.get(server[1] + "gradio_api/info").json()["named_endpoints"]
    examples = {(name, p["parameter_name"]): p["example_input"] for name, endpoint in info.items()
                for p in endpoint["parameters"] if p["component"] in ("Image", "Imageeditor")}
    assert set(examples) >= {("/forward", "sprite"), ("/redraw", "sprite"), ("/inpaint", "sprite"),
                             ("/inpaint", "mask")}
    assert "http" not in str(examples)
    picture = examples["/forward", "sprite"]["path"]
    assert Image.open(picture).size == (64, 64)
    noisy, strip, formula = client.predict(sprite=handle_file(picture), t=100, api_name="/forward")
    assert Path(noisy).is_file() and "x_{100}" in formula


@pytest.mark.slow
def test_api_compare(client):
    with_noise, without_noise, caption, seed = client.predict(**COMPARE, api_name="/compare")
    assert seed == 7 and "Same seed" in caption
    assert not np.array_equal(np.asarray(Image.open(with_noise)), np.asarray(Image.open(without_noise)))


@pytest.mark.slow
def test_api_compare_samplers(client):
    args = {k: COMPARE[k] for k in ("context", "weights", "num_inference_steps", "guidance_scale", "num_images",
                                    "seed", "randomize_seed")}
    gallery, seed = client.predict(**args, samplers=["DDIM", "UniPC"], api_name="/compare_samplers")
    assert seed == 7 and [item["caption"].split(":")[0] for item in gallery] == ["DDIM", "UniPC"]
    with pytest.raises(Exception, match="samplers must be one of"):
        client.predict(**args, samplers=["Heun"], api_name="/compare_samplers")


@pytest.mark.slow
def test_generated_files_are_removed_by_the_cache_cleanup(server, client):
    demo, _ = server
    sheet = Path(client.predict(**FAST, api_name="/generate")[4]).name  # sprites-<run>.png
    folder = Path(demo.GRADIO_CACHE) / "sprite-diffusion"
    files = [folder / sheet, folder / sheet.replace("sprites-", "denoising-").replace(".png", ".gif")]
    assert all(f.is_file() for f in files) and demo.delete_cache == (600, 1800)
    # What delete_cache runs every 10 minutes, looked up where gradio's task looks it up: ui/gradio_fixes.py's
    # wrapper (a reference taken at import time could be gradio's own, depending on which module imported app first).
    assert route_utils.delete_files_created_by_app is gradio_fixes.cleanup_on_snapshots
    route_utils.delete_files_created_by_app(demo, None)  # for files over 30 minutes old
    assert not any(f.exists() for f in files)


@pytest.mark.slow
def test_full_queue_answers_busy_at_once(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "QUEUE_SIZE", 1)
    demo = app.build_demo(load_pipeline(tiny_dir), "", tmp_path)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, download_files=str(tmp_path), analytics_enabled=False, verbose=False)
        slow = {**FAST, "num_inference_steps": 500, "num_images": 16}
        running = client.submit(**slow, api_name="/generate")
        while running.status().code.name not in ("PROCESSING", "ITERATING"):
            time.sleep(0.05)
        waiting = client.submit(**slow, api_name="/generate")
        deadline = time.monotonic() + 60  # on a busy machine joining the queue can take a while
        while waiting.status().code.name != "IN_QUEUE" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting.status().code.name == "IN_QUEUE", "the second request never reached the queue"
        with pytest.raises(Exception, match="(?i)queue is full"):
            client.predict(**FAST, api_name="/generate")
        for job in (waiting, running):
            with contextlib.suppress(httpx.TimeoutException):  # cleanup only: demo.close() ends them anyway
                job.cancel()
    finally:
        demo.close()


@pytest.mark.slow
def test_concurrent_requests_sample_together_and_get_their_own_sprites(tiny_dir, tmp_path):
    """With batching (as `python app.py` runs), requests in flight share U-Net calls: four users at once, each
    gets the sprites the same request gets alone (model/batching.py: within one level of float rounding)."""
    pipe = load_pipeline(tiny_dir)
    requests = [{**FAST, "num_inference_steps": 30, "seed": s, "context": c, "guidance_scale": g}
                for s, c, g in ((1, "hero", 1.0), (2, "food", 2.0), (3, "spell", 1.0), (4, "item", 3.0))]
    alone = [final_sprites(list(app.SpriteApp(pipe, tmp_path / "alone").generate(**r))) for r in requests]
    batcher = pipe.enable_batching()
    demo = app.build_demo(pipe, "", tmp_path / "files")
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        clients = [Client(url, download_files=str(tmp_path), analytics_enabled=False, verbose=False)
                   for _ in requests]
        jobs = [c.submit(**r, api_name="/generate") for c, r in zip(clients, requests, strict=True)]
        sheets = [job.result(timeout=300)[4] for job in jobs]
    finally:
        demo.close()
    for sheet, expected in zip(sheets, alone, strict=True):
        sprites = np.asarray(Image.open(sheet))
        assert sprites.shape == expected.shape and np.abs(sprites.astype(int) - expected.astype(int)).max() <= 1
    assert max(len(m) for m in batcher.merged) >= 2  # at least two requests in one U-Net call


def test_the_page_says_when_it_is_warming_up(sprites, monkeypatch):
    monkeypatch.setattr(sprites.pipe, "compiling", True, raising=False)
    note, timer = sprites.warm_up_note()
    assert note.visible and "Warming up" in note.value
    assert timer == gr.skip()  # the timer keeps polling
    monkeypatch.setattr(sprites.pipe, "compiling", False)
    note, timer = sprites.warm_up_note()
    assert not note.visible and timer.active is False
