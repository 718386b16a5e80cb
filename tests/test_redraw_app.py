"""The Redraw tab (ui/redraw.py): its event functions called directly, then /redraw and /inpaint of a launched
app through gradio_client. A tiny random model keeps it fast; its sprites are noise, but the streaming, the
kept pixels and the checks behave as with the bundled model.
"""

import math

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from model import load_pipeline, make_grid
from ui.redraw import ENLARGE, GRID_WIDTH, RedrawEvents, cells_touched, painted

R = 16
SETTINGS = dict(context="hero", sampler="DDIM", num_inference_steps=20, guidance_scale=1.0, num_images=3, seed=7,
                randomize_seed=False)


@pytest.fixture(scope="module")
def tab(tiny_dir, tmp_path_factory):
    return RedrawEvents(app.SpriteApp(load_pipeline(tiny_dir), tmp_path_factory.mktemp("files")))


@pytest.fixture(scope="module")
def sprite():
    return np.random.default_rng(0).integers(0, 256, (R, R, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mask():
    repaint = np.zeros((R, R), dtype=bool)
    repaint[3:9, 4:12] = True
    return repaint


def layer_file(repaint: np.ndarray, path) -> str:
    """A painted layer as the page's editor uploads it: the sprite's size x 16, transparent but for the paint."""
    layer = np.zeros((R * ENLARGE, R * ENLARGE, 4), dtype=np.uint8)
    layer[np.kron(repaint, np.ones((ENLARGE, ENLARGE), dtype=bool))] = (255, 0, 255, 153)
    Image.fromarray(layer).save(path)
    return str(path)


def sprites_in(grid: Image.Image, n: int) -> np.ndarray:
    """A result grid (n sprites, up to four across, enlarged by a whole factor) -> the (n, R, R, 3) sprites."""
    sheet_width = make_grid(np.zeros((n, R, R, 3), np.uint8), min(n, 4)).shape[1]
    factor = grid.width // sheet_width
    sheet = np.asarray(grid.convert("RGB"))[::factor, ::factor]
    cols = min(n, 4)
    return np.stack([sheet[1 + (i // cols) * (R + 1):][:R, 1 + (i % cols) * (R + 1):][:, :R] for i in range(n)])


# ---- event functions, called directly -------------------------------------------------------

def test_redraw_streams_frames_then_the_final_grid_of_variations(tab, sprite):
    outputs = list(tab.redraw(sprite, 0.6, **SETTINGS))
    *frames, last = outputs
    assert len(frames) >= 2
    for current, predicted, final, stats, seed in frames:
        assert current is not None and predicted is not None and final is None
        assert stats.startswith("Step ") and seed == 7
    current, predicted, final, stats, seed = last
    assert GRID_WIDTH // 2 < final.width <= GRID_WIDTH and seed == 7  # enlarged by a whole factor
    assert "3 variations at strength 0.6 (t₀ = 300)" in stats and "DDIM steps" in stats
    expected = tab.pipe.redraw(sprite, "hero", strength=0.6, num_images=3, num_inference_steps=20, sampler="ddim",
                               seed=7).array
    assert np.array_equal(sprites_in(final, 3), expected)  # the pipeline's redraw, shown as it is


def test_strength_zero_gives_the_sprite_back(tab, sprite):
    *_, (current, predicted, final, stats, seed) = tab.redraw(sprite, 0, **SETTINGS)
    assert np.array_equal(sprites_in(final, 3), np.stack([sprite] * 3))
    assert "comes back unchanged" in stats
    start, note = tab.start_point(sprite, 0)
    assert np.array_equal(np.asarray(start)[::ENLARGE, ::ENLARGE], sprite) and "= **0**" in note
    start, note = tab.start_point(sprite, 1)
    assert "plain sampling" in note
    with pytest.raises(gr.Error, match="strength must be a number from 0 to 1"):
        tab.start_point(sprite, -0.5)


def test_an_upload_is_fitted_and_starts_the_mask_canvas(tab, sprite, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(sprite).resize((R * 4, R * 4), Image.NEAREST).save(big)
    start, note, canvas = tab.canvas({"path": str(big), "meta": {"_type": "gradio.FileData"}}, 0.5)
    assert np.array_equal(np.asarray(canvas["background"]), np.kron(sprite, np.ones((ENLARGE, ENLARGE, 1),
                                                                                       np.uint8)))
    assert canvas["layers"] == [] and start.size == (R * ENLARGE, R * ENLARGE) and "= **250**" in note
    assert tab.canvas(None, 0.5)[2] is None


def test_inpaint_keeps_every_pixel_outside_the_mask(tab, sprite, mask, tmp_path):
    painted_layer = {"background": None, "layers": [{"path": layer_file(mask, tmp_path / "layer.png")}],
                     "composite": None}
    *frames, last = tab.inpaint(sprite, painted_layer, **SETTINGS, jumps=2)
    assert frames and all(update[2] is None for update in frames)
    current, predicted, final, preview, stats, seed = last
    redrawn = sprites_in(final, 3)
    for variation in redrawn:
        assert np.array_equal(variation[~mask], sprite[~mask])
        assert (variation[mask] != sprite[mask]).any(axis=-1).mean() > 0.5
    assert f"3 repaints of {mask.sum()} pixels" in stats and "resampling jumps of 2" in stats
    shown = np.asarray(preview)[::ENLARGE, ::ENLARGE]  # the mask as the model got it: tinted pixels
    assert np.array_equal(shown[~mask], sprite[~mask]) and not np.array_equal(shown[mask], sprite[mask])


def test_a_sprite_pixel_is_repainted_when_any_of_its_square_is_painted(tab):
    layer = np.zeros((R * ENLARGE, R * ENLARGE, 4), dtype=np.uint8)
    layer[17, 40, 3] = 1  # one faint canvas pixel in sprite pixel (1, 2)
    layer[100:140, 200, 3] = 255  # a thin line across sprite pixels (6..8, 12)
    expected = np.zeros((R, R), dtype=bool)
    expected[1, 2] = expected[6:9, 12] = True
    assert np.array_equal(tab.read_mask({"layers": [layer]}), expected)
    grey = np.zeros((R * 2, R * 2), dtype=np.uint8)  # a plain black-and-white mask: bright = repaint
    grey[:2, :2] = 255
    assert np.array_equal(cells_touched(painted(Image.fromarray(grey)), R), np.pad([[True]], ((0, R - 1),) * 2))
    assert np.array_equal(tab.read_mask(expected), expected)  # from Python: a 2-D bool mask as is


@pytest.mark.parametrize("changes, words", [
    ({"strength": 1.5}, "strength must be a number from 0 to 1, got 1.5"),
    ({"strength": math.nan}, "strength must be a number from 0 to 1"),
    ({"strength": "abc"}, "strength must be a number from 0 to 1"),
    ({"sprite": None}, "sprite is missing"),
    ({"sprite": "abc"}, "not an image"),
    ({"num_images": 17}, "num_images must be a whole number from 1 to 16"),
    ({"context": "mixed"}, "context must be one of"),
    ({"sampler": "Heun"}, "sampler must be one of"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"guidance_scale": math.inf}, "guidance_scale"),
    ({"seed": -1}, "seed"),
])
def test_redraw_refuses_bad_input_with_a_clear_message(tab, sprite, changes, words):
    args = {"sprite": sprite, "strength": 0.5, **SETTINGS, **changes}
    with pytest.raises(gr.Error) as err:
        next(tab.redraw(**args))
    assert words in err.value.message


@pytest.mark.parametrize("changes, words", [
    ({"mask": None}, "mask must be the mask editor's value"),
    ({"mask": "abc"}, "mask must be the mask editor's value"),
    ({"mask": {"layers": "abc"}}, "mask must be the mask editor's value"),
    ({"mask": {"background": None, "layers": [], "composite": None}}, "mask is empty"),
    ({"mask": {"layers": [np.zeros((64, 64, 4), np.uint8)]}}, "mask is empty"),
    ({"mask": {"layers": [{"path": "/no/such/layer.png"}]}}, "not an image"),
    ({"mask": np.full((R, R), 300)}, "mask must be binary"),
    ({"mask": {"layers": [np.zeros((4, 4, 2, 2))]}}, "mask layers must be images"),
    ({"jumps": 11}, "jumps must be a whole number from 0 to 10"),
    ({"jumps": 2.5}, "jumps must be a whole number"),
    ({"jumps": 30, "num_inference_steps": 20}, "jumps must be a whole number from 0 to 10"),
    ({"jumps": 6, "num_inference_steps": 5}, "jumps must be a whole number from 0 to 5 (at most the number of steps)"),
    ({"jumps": 2, "sampler": "DPM-Solver++ 2M"}, "resampling jumps"),
    ({"context": "dragon"}, "context must be one of"),
])
def test_inpaint_refuses_bad_input_with_a_clear_message(tab, sprite, mask, changes, words):
    args = {"sprite": sprite, "mask": {"layers": [mask]}, **SETTINGS, "jumps": 0, **changes}
    with pytest.raises(gr.Error) as err:
        next(tab.inpaint(**args))
    assert words in err.value.message


def test_a_text_file_as_the_sprite_gets_the_upload_message(tab, mask, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    upload = {"path": str(notes), "meta": {"_type": "gradio.FileData"}}
    for call in (lambda: next(tab.redraw(upload, 0.5, **SETTINGS)),
                 lambda: next(tab.inpaint(upload, {"layers": [mask]}, **SETTINGS)),
                 lambda: tab.start_point(upload, 0.5)):
        with pytest.raises(gr.Error) as err:
            call()
        assert "not an image" in err.value.message and str(tmp_path) not in err.value.message


# ---- the launched app, through gradio_client ----------------------------------------------------

@pytest.mark.slow
def test_redraw_and_inpaint_endpoints(tiny_dir, tmp_path, sprite, mask):
    demo = app.build_demo(load_pipeline(tiny_dir), "**Model:** tiny test model.", tmp_path / "files")
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, download_files=str(tmp_path / "downloads"), analytics_enabled=False, verbose=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert [p["parameter_name"] for p in api["/redraw"]["parameters"]] == ["sprite", "strength", *SETTINGS]
        assert [p["parameter_name"] for p in api["/inpaint"]["parameters"]] == [
            "sprite", "mask", *list(SETTINGS)[:5], "jumps", "seed", "randomize_seed"]
        upload = tmp_path / "sprite.png"
        Image.fromarray(sprite).resize((R * 4, R * 4), Image.NEAREST).save(upload)  # any size is fitted

        job = client.submit(handle_file(str(upload)), 0.6, **SETTINGS, api_name="/redraw")
        updates = list(job)
        assert len(updates) >= 2 and updates[0][2] is None
        current, predicted, final, stats, seed = job.outputs()[-1]
        assert seed == 7 and "3 variations at strength 0.6" in stats
        expected = load_pipeline(tiny_dir).redraw(sprite, "hero", strength=0.6, num_images=3,
                                                  num_inference_steps=20, sampler="ddim", seed=7).array
        assert np.array_equal(sprites_in(Image.open(final), 3), expected)

        editor = {"background": handle_file(str(upload)), "layers": [handle_file(layer_file(mask, tmp_path / "l.png"))],
                  "composite": None}
        result = client.predict(handle_file(str(upload)), editor, **SETTINGS, jumps=0, api_name="/inpaint")
        repainted = sprites_in(Image.open(result[2]), 3)
        assert all(np.array_equal(r[~mask], sprite[~mask]) for r in repainted)
        assert f"of {mask.sum()} pixels" in result[4]

        with pytest.raises(Exception, match="strength must be a number from 0 to 1, got 1.5"):
            client.predict(handle_file(str(upload)), 1.5, **SETTINGS, api_name="/redraw")
        with pytest.raises(Exception, match="mask is empty"):
            client.predict(handle_file(str(upload)), {**editor, "layers": []}, **SETTINGS, jumps=0,
                           api_name="/inpaint")
    finally:
        demo.close()
