"""The Redraw tab: redraw a sprite from part of the way up the noise (SDEdit), or repaint the pixels painted
over on it (RePaint). Both run the pipeline's one reverse loop (model/editing.py); this file checks the raw
request values, streams the loop like Generate, and lays the tab out. app.py calls :func:`build_redraw_tab`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gradio as gr
import numpy as np
from PIL import Image

from model import SAMPLERS, fit_mask, timestep_grid, to_uint8, upscale
from model.editing import EditPlan
from model.gallery import display_grid, noisy_copies
from model.inputs import InputError, choice, real_number, whole_number
from ui.events import (
    LIVE_FRAMES,
    LIVE_WIDTH,
    MAX_SEED,
    PROGRESS,
    SAMPLER_LABELS,
    UNCONDITIONAL,
    SpriteApp,
    invalid_input,
    quiet_about_uploads,
    read_upload,
    sampler_hint,
)

STRENGTH, STEPS, GUIDANCE, VARIATIONS = 0.5, 50, 2.0, 8  # the tab's defaults
MAX_VARIATIONS = 16
MAX_JUMPS = 10  # RePaint's jump length j; each jump runs its stretch twice (r = 2)
JUMP_SAMPLES = 2
ENLARGE = 16  # the sprite box and the mask canvas show each sprite pixel as a 16 x 16 block
TINT = np.array([255, 0, 255])  # the repainted pixels in the mask preview
MASK_HELP = ("Pick the brush (left of the canvas) and paint over the pixels to repaint. A sprite pixel is "
             "repainted when the paint touches any part of its square; *Mask used* shows them as the model gets "
             "them.")
GRID_WIDTH = 360  # the result grids' width in pixels, enlarged by a whole factor (5 for four sprites across)


class RedrawEvents:
    """The tab's event functions, bound to the app's pipeline and its checks (SpriteApp)."""

    def __init__(self, app: SpriteApp):
        self.app = app
        self.pipe = app.pipe
        self.randomize: gr.Checkbox | None = None  # the tab's "Randomise seed", ticked by the page on load

    # ---- the page's helpers -----------------------------------------------------------------
    def sprite_of(self, sprite: object) -> np.ndarray:
        """The request's sprite (an upload, gradio's file dict or an array) -> (R, R, 3) uint8."""
        picture = read_upload(sprite)
        if picture is None:
            raise invalid_input("sprite is missing: pick a dataset sprite or upload an image")
        return self.app.as_sprite(picture)

    def start_point(self, sprite: object, strength: float = STRENGTH) -> tuple[Image.Image | None, str]:
        """Where a redraw starts: the sprite forward-noised to t0 = round(strength x T), and the formula."""
        return self.canvas(sprite, strength)[:2]

    def canvas(self, sprite: object, strength: float = STRENGTH) -> tuple[Image.Image | None, str, dict | None]:
        """A new sprite or strength: the start point, its formula, and a fresh mask canvas (the sprite as the
        model sees it, enlarged, with nothing painted yet)."""
        strength = _checked(real_number, "strength", strength, 0.0, 1.0)
        picture = read_upload(sprite)
        if picture is None:
            return None, "Pick a sprite or upload one.", None
        clean = self.app.as_sprite(picture)
        big_t = self.pipe.num_train_steps
        t0 = round(strength * big_t)
        noisy = noisy_copies(clean, self.pipe.noise_schedule, [t0])[0]
        ab = float(self.pipe.noise_schedule.alpha_bar[t0])
        note = (f"t₀ = round({strength:g} × {big_t}) = **{t0}**: the redraw starts from "
                f"$$x_{{{t0}}} = {ab ** 0.5:.3f}\\,x_0 + {(1 - ab) ** 0.5:.3f}\\,\\epsilon$$"
                "and runs the steps from there down to 0 (each variation with its own ε).")
        if t0 == big_t:
            note += " At strength 1 the sprite is forgotten: this is plain sampling."
        background = upscale(clean, ENLARGE)
        return upscale(noisy, ENLARGE), note, {"background": background, "layers": [], "composite": None}

    # ---- the endpoints ----------------------------------------------------------------------
    def redraw(self, sprite: object = None, strength: float = STRENGTH, context: str = "hero",
               sampler: str = "DDIM", num_inference_steps: int = STEPS, guidance_scale: float = GUIDANCE,
               num_images: int = VARIATIONS, seed: int = 0, randomize_seed: bool = False,
               progress: gr.Progress = PROGRESS) -> Iterator[tuple]:
        """SDEdit: stream (samples x_t, predicted x0, final grid, stats, seed), the final grid with the last.

        strength 0 gives the sprite back unchanged, 1 is plain sampling; in between the run starts from the
        sprite noised to t0 = round(strength x T) and keeps only the grid's steps at or below t0.
        """
        strength = _checked(real_number, "strength", strength, 0.0, 1.0)
        args = self._settings(context, sampler, num_inference_steps, guidance_scale, num_images, seed,
                              randomize_seed)
        clean = self.sprite_of(sprite)
        try:
            steps = self.pipe.redraw_steps(clean, strength=strength, **args)
        except ValueError as err:
            raise invalid_input(str(err)) from None
        big_t, n = self.pipe.num_train_steps, args["num_inference_steps"]
        t0 = round(strength * big_t)
        total = n if t0 == big_t else sum(t <= t0 for t, _ in timestep_grid(n, big_t))

        def stats(run: int, seconds: float) -> str:
            if run == 0:
                return f"**Strength 0 (t₀ = 0): nothing is noised, so the sprite comes back unchanged**, seed " \
                       f"{args['seed']}"
            return (f"**{_plural(args['num_images'], 'variation')} at strength {strength:g} (t₀ = {t0}): {run} "
                    f"{SAMPLERS[args['sampler']].label} steps in {seconds:.2f} s**, seed {args['seed']}")

        unchanged = np.repeat(clean[None], args["num_images"], axis=0)
        for update in self._stream(steps, total, progress, unchanged, stats):
            yield (*update, args["seed"])

    def inpaint(self, sprite: object = None, mask: object = None, context: str = "hero", sampler: str = "DDIM",
                num_inference_steps: int = STEPS, guidance_scale: float = GUIDANCE, num_images: int = VARIATIONS,
                jumps: int = 0, seed: int = 0, randomize_seed: bool = False,
                progress: gr.Progress = PROGRESS) -> Iterator[tuple]:
        """RePaint: stream (samples x_t, predicted x0, final grid, mask preview, stats, seed).

        Every pixel outside the mask comes back exactly as it was. jumps > 0 turns on RePaint's resampling:
        every stretch of ``jumps`` steps runs twice, going back up by the forward process in between.
        """
        jump_length = _checked(whole_number, "jumps", jumps, 0, MAX_JUMPS)
        args = self._settings(context, sampler, num_inference_steps, guidance_scale, num_images, seed,
                              randomize_seed)
        if jump_length > args["num_inference_steps"]:
            raise invalid_input(f"jumps must be a whole number from 0 to {args['num_inference_steps']} (at most the "
                                f"number of steps), got {jump_length}")
        clean = self.sprite_of(sprite)
        repaint = self.read_mask(mask)
        jump_samples = JUMP_SAMPLES if jump_length else 1
        try:
            steps = self.pipe.inpaint_steps(clean, repaint, jump_length=jump_length, jump_n_sample=jump_samples,
                                            **args)
        except ValueError as err:
            raise invalid_input(str(err)) from None
        total = len(EditPlan(jump_length=jump_length, jump_n_sample=jump_samples)
                    .visit_order(args["num_inference_steps"]))
        preview = mask_preview(clean, repaint)

        def stats(run: int, seconds: float) -> str:
            jumped = f", resampling jumps of {jump_length}" if jump_length else ""
            return (f"**{_plural(args['num_images'], 'repaint')} of {_plural(int(repaint.sum()), 'pixel')} "
                    f"({run} {SAMPLERS[args['sampler']].label} steps{jumped}) in {seconds:.2f} s**, "
                    f"seed {args['seed']}")

        for current, predicted, final, text in self._stream(steps, total, progress, clean[None], stats):
            yield current, predicted, final, preview, text, args["seed"]

    def read_mask(self, mask: object) -> np.ndarray:
        """The editor's value (its painted layers) -> the (R, R) bool mask, True = repaint.

        A sprite pixel is repainted when any part of its square is painted (alpha > 0; a layer without
        transparency: bright pixels), which is what a learner who brushed over it expects. The page's canvas is
        the sprite enlarged 16x; another size is fitted as the sprite is (padded to a square, then shrunk).
        """
        size = self.pipe.unet.config.sample_size
        wrong = ("mask must be the mask editor's value: a dict whose 'layers' list holds the painted images "
                 "(painted = repaint)")
        if isinstance(mask, np.ndarray) and mask.ndim == 2:  # from Python: bools, 0-1 or 0-255, as fit_mask takes
            layers = [mask]
        elif isinstance(mask, dict) and isinstance(mask.get("layers"), list | tuple):
            layers = list(mask["layers"])
        else:
            raise invalid_input(wrong)
        repaint = np.zeros((size, size), dtype=bool)
        for layer in layers:
            if layer is None:
                continue
            picture = read_upload(layer, field="mask")
            if isinstance(picture, np.ndarray) and picture.ndim == 2:
                try:
                    repaint |= fit_mask(picture, size) if picture.any() else False
                except ValueError as err:
                    raise invalid_input(str(err)) from None
                continue
            repaint |= cells_touched(painted(picture), size)
        if not repaint.any():
            raise invalid_input("mask is empty: paint over the pixels to repaint")
        return repaint

    # ---- shared -------------------------------------------------------------------------------
    def _settings(self, context, sampler, num_inference_steps, guidance_scale, num_images, seed,
                  randomize_seed) -> dict:
        """SpriteApp.settings' checks, with the tab's choices: one context or none, at most 16 variations."""
        names = self.pipe.context_names
        context = _checked(choice, "context", context, [*names, UNCONDITIONAL])
        _checked(whole_number, "num_images", num_images, 1, MAX_VARIATIONS)
        args = self.app.settings(context, "", num_inference_steps, sampler, True, 1.0, guidance_scale, num_images,
                                 seed, randomize_seed)
        return {k: v for k, v in args.items() if k not in ("add_noise", "noise_scale")}

    @staticmethod
    def _stream(steps: Iterator, total: int, progress: gr.Progress, unchanged: np.ndarray,
                stats: Callable[[int, float], str]) -> Iterator[tuple]:
        """(x_t grid, x0 grid, None, line) every few steps, then (x_t, x0, final grid, stats) once."""
        every, run = max(1, total // LIVE_FRAMES), 0
        sprites = unchanged
        current = predicted = display_grid(sprites, LIVE_WIDTH, _columns(len(sprites)))
        start = time.perf_counter()
        for step in steps:
            run += 1
            progress((min(run, total), total), desc="Denoising", unit="steps")
            sprites = to_uint8(step.sample)
            if step.index % every == 0:
                current = display_grid(sprites, LIVE_WIDTH, _columns(len(sprites)))
                predicted = display_grid(to_uint8(step.predicted_clean), LIVE_WIDTH, _columns(len(sprites)))
                yield current, predicted, None, f"Step {run} of {total}: t = {step.timestep}"
        seconds = time.perf_counter() - start
        if run:
            current = display_grid(sprites, LIVE_WIDTH, _columns(len(sprites)))
        yield current, predicted, display_grid(sprites, GRID_WIDTH, _columns(len(sprites))), stats(run, seconds)


def painted(picture: np.ndarray | Image.Image) -> np.ndarray:
    """A painted layer -> (H, W) bool: where its alpha is above 0, or, without transparency, where it is bright."""
    try:
        image = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture, np.uint8))
    except (TypeError, ValueError):
        raise invalid_input("mask layers must be images (RGBA: painted where alpha > 0)") from None
    if "A" in image.getbands() or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))[..., 3] > 0
    return np.asarray(image.convert("L")) >= 128


def cells_touched(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool: a cell is True when any pixel of its block is; a non-square mask is
    first padded as the sprite is (centred across, standing on the bottom edge)."""
    height, width = mask.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    square[side - height:, (side - width) // 2:(side - width) // 2 + width] = mask
    shares = np.asarray(Image.fromarray(square).resize((size, size), Image.BOX))  # painted share per cell
    return shares > 1e-6


def mask_preview(sprite: np.ndarray, repaint: np.ndarray) -> Image.Image:
    """The sprite with the pixels to repaint tinted, enlarged: the mask exactly as the model gets it."""
    shown = sprite.astype(np.float32)
    shown[repaint] = 0.35 * shown[repaint] + 0.65 * TINT
    return upscale(shown.round().astype(np.uint8), ENLARGE)


def _checked(check: Callable, *args):
    """A model.inputs check whose InputError becomes the page's plain message."""
    try:
        return check(*args)
    except InputError as err:
        raise invalid_input(str(err)) from None


def _columns(n: int) -> int:
    return min(n, 4)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---- the tab ------------------------------------------------------------------------------------
def build_redraw_tab(events: SpriteApp, pipe, gpu: Callable = lambda fn: fn) -> RedrawEvents:
    """Lay out the Redraw tab inside the caller's ``gr.Tab`` and wire its events; ``gpu`` wraps the samplers.

    Three columns: the sprite and the sampling settings; the two actions (strength, mask); the results.
    """
    tab = RedrawEvents(events)
    names, big_t = pipe.context_names, pipe.num_train_steps
    first = np.asarray(upscale(events.examples[0], ENLARGE)) if events.examples is not None else None
    start, note = tab.start_point(first, STRENGTH) if first is not None else (None, "")
    shown = ["pixelated", "label-room"]  # label-room: the label sits above the pixels, not over them
    gr.Markdown("Start from a sprite instead of pure noise. **Redraw** noises it part of the way up and lets the "
                "model draw it back (SDEdit); **Repaint** redraws only the pixels you paint over and keeps every "
                "other pixel exactly (RePaint).")
    with gr.Row():
        with gr.Column(min_width=320):
            sprite = gr.Image(first, label="Sprite (pick below or upload)", type="numpy", image_mode="RGBA",
                              sources=["upload"], format="png", height=280, width=280,
                              elem_classes=["pixelated", "fill"], elem_id="redraw-sprite")
            if events.examples is not None:
                gallery = gr.Gallery([(upscale(s, 4), c) for s, c in zip(events.examples, events.example_captions,
                                                                          strict=True)],
                                     label="Dataset sprites (click one)", columns=3, height=330,
                                     allow_preview=False, format="png", elem_classes="pixelated",
                                     elem_id="redraw-examples")
            else:
                gr.Markdown("The bundled dataset is not available here: upload a sprite instead.")
            context = gr.Radio([*names, ("none (unconditional)", UNCONDITIONAL)], value=names[0], label="Context",
                               info="What the model is told to draw")
            sampler = gr.Radio(SAMPLER_LABELS, value="DDIM", label="Sampler")
            hint = gr.Markdown(sampler_hint("DDIM"))
            steps = gr.Slider(1, big_t, value=STEPS, step=1, label="Steps",
                              info="Of a full run from pure noise; a redraw runs the ones at or below t₀")
            guidance = gr.Slider(0, 5, value=GUIDANCE, step=0.1, label="Guidance scale",
                                 info="1 is off; 0 ignores the context")
            num_images = gr.Slider(1, MAX_VARIATIONS, value=VARIATIONS, step=1, label="Number of variations")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                # False for the API (predict(seed=42) means seed 42); app.py ticks it when the page loads
                randomize = gr.Checkbox(False, label="Randomise seed")
        with gr.Column(min_width=320):
            gr.Markdown("### Redraw (SDEdit)")
            strength = gr.Slider(0, 1, value=STRENGTH, step=0.01, label="Strength",
                                 info=f"How far up the noise the sprite goes: t₀ = round(strength × {big_t}); "
                                      "0 keeps it, 1 forgets it")
            start_note = gr.Markdown(note)
            start_image = gr.Image(start, label="Starting point: the sprite at t₀", format="png", height=300,
                                   elem_classes=shown, elem_id="redraw-start")
            redraw_button = gr.Button("Redraw", variant="primary", size="lg")
            gr.Markdown("### Repaint (RePaint)\n" + MASK_HELP)
            mask = gr.ImageEditor(
                tab.canvas(first)[2] if first is not None else None, label="Mask: paint what to repaint",
                type="numpy", image_mode="RGBA", sources=[], transforms=[], layers=False, format="png",
                brush=gr.Brush(colors=["rgba(255, 0, 255, 0.6)"], default_size=8, color_mode="fixed"),
                eraser=gr.Eraser(default_size=8), canvas_size=(16 * ENLARGE, 16 * ENLARGE), fixed_canvas=True,
                height=340, elem_id="repaint-mask", elem_classes="pixelated", buttons=[])
            jumps = gr.Slider(0, MAX_JUMPS, value=0, step=1, label="Resampling jumps",
                              info="0 is off; j runs every stretch of j steps twice, so the new pixels settle in "
                                   "with the kept ones (DDPM and DDIM only)")
            repaint_button = gr.Button("Repaint the masked pixels", variant="primary", size="lg")
        with gr.Column(min_width=320):
            stats = gr.Markdown("Press **Redraw** or **Repaint the masked pixels**.", label="Run details")
            with gr.Row():
                current = gr.Image(label="Samples xₜ", format="png", elem_classes=[*shown, "fill"],
                                   min_width=120, buttons=["fullscreen"])
                predicted = gr.Image(label="Predicted x̂₀", format="png", elem_classes=[*shown, "fill"],
                                     min_width=120, buttons=["fullscreen"])
            redrawn = gr.Image(label="Redrawn sprites", format="png", elem_classes=shown, elem_id="redraw-grid",
                               buttons=["download", "fullscreen"])
            repainted = gr.Image(label="Repainted sprites", format="png", elem_classes=shown,
                                 elem_id="repaint-grid", buttons=["download", "fullscreen"])
            mask_view = gr.Image(label="Mask used (tinted: repainted)", format="png", elem_classes=shown,
                                 buttons=[])

    settings = [context, sampler, steps, guidance, num_images]
    redraw_button.click(gpu(tab.redraw), [sprite, strength, *settings, seed, randomize],
                        [current, predicted, redrawn, stats, seed], api_name="redraw", preprocess=False,
                        concurrency_id="sampler", concurrency_limit=tab.app.sampling_limit, show_progress_on=[redrawn])
    repaint_button.click(gpu(tab.inpaint), [sprite, mask, *settings, jumps, seed, randomize],
                         [current, predicted, repainted, mask_view, stats, seed], api_name="inpaint",
                         preprocess=False, concurrency_id="sampler", concurrency_limit=tab.app.sampling_limit,
                         show_progress_on=[repainted])
    quiet = dict(api_visibility="private", concurrency_limit=4, trigger_mode="always_last", show_progress="hidden",
                 preprocess=False)
    strength.change(quiet_about_uploads(tab.start_point, (None, "Pick a sprite or upload one.")), [sprite, strength],
                    [start_image, start_note], **quiet)
    # A bad upload: check_upload's one message, then the box is cleared (see app.py's forward tab).
    sprite.upload(tab.app.check_upload, sprite, None, api_visibility="private", show_progress="hidden",
                  preprocess=False).failure(lambda: None, None, sprite, api_visibility="private", queue=False,
                                            show_progress="hidden")
    sprite.change(quiet_about_uploads(tab.canvas, (None, "Pick a sprite or upload one.", None)), [sprite, strength],
                  [start_image, start_note, mask], **quiet)
    sampler.change(sampler_hint, sampler, hint, api_visibility="private", queue=False, show_progress="hidden")
    if events.examples is not None:
        gallery.select(events.pick_example, None, sprite, api_visibility="private", queue=False)
    tab.randomize = randomize
    return tab
