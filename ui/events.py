"""The app's event functions: each checks the raw request values (web page or API alike), runs the pipeline
of model/ and turns its output into what the page shows. app.py lays the page out and wires these in.
"""

from __future__ import annotations

import random
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np
from gradio_client import handle_file
from PIL import Image

from model import MAX_IMAGES, SAMPLERS, SpritePipeline, fit_sprite, to_uint8, upscale
from model.batching import Busy
from model.gallery import display_grid, save_gif, save_sheet
from model.inputs import InputError, choice, flag, real_number, weight_vector, whole_number
from model.sprites import default_sprites
from model.walk import MAX_STOPS, context_walk, walk_sprites
from ui.figures import schedule_figure
from ui.forward import GuessCurves, forward_view, network_guess

MIXED, UNCONDITIONAL = "mixed", "unconditional"
SAMPLER_LABELS = [s.label for s in SAMPLERS.values()]  # what the page and the API take ("DDIM"); names work too
MAX_SEED = 2**31 - 1
MAX_WEIGHT = 10.0  # per context; the sliders stop at 2
MAX_SCALE = 20.0  # guidance and noise scale, as the pipeline allows
# Chosen in docs/samplers.md: with the teacher and guidance 2, DPM-Solver++ 2M SDE at 10 steps meets the quality
# bar besides its pixel statistics (which no run meets) at 200 sprites per context, with backgrounds that look clean
# (88% within 3 levels of white, against 66% for UniPC 5, the previous default) and the fewest visible colours short of
# DDPM 500: 16 sprites in 1.3 s on a 2-core CPU (compiled), DDPM 500 in 81 s (docs/performance.md).
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "DPM-Solver++ 2M SDE", 10, 2.0
# The noise on/off comparison runs DDPM at steps of its own: at the page's 5-10 the re-added noise is too coarse and
# the "on" side is speckled too. From about 20 steps "on" gives clean figures and "off" the dark collapsed blob
# (looked at for 20/50/100/200, seed 3); 50 is the cheapest with a margin: about 17 s for both sides on 2 cores.
COMPARE_STEPS = 50
COMPARED_SAMPLERS = ["DDIM", "UniPC", "DPM-Solver++ 2M SDE", "Euler ancestral"]  # the comparison's first pick
WALK_STOPS, WALK_SPRITES, MAX_WALK_SPRITES = 7, 4, 8  # a context walk's columns, rows and most rows
LIVE_FRAMES = 20  # GIF frames per run, and the most live updates
# Live updates (and progress) at most this often: what an eye follows. Each update costs two pictures encoded, sent
# and decoded, in a browser that may share the sampling's cores; at 0.25 s a default click took 1.35x the pipeline's
# own time to its final sprites, at 0.4 s 1.29x (python -m benchmarks.click, docs/performance.md).
LIVE_INTERVAL_S = 0.4
# Grid widths in pixels, enlarged by whole numbers; the browser scales the live ones up, still crisp.
LIVE_WIDTH, FINAL_WIDTH = 160, 560
MAX_UPLOAD_SIDE = 2048  # an upload may hold at most this many pixels squared
SAMPLING_IN_FLIGHT = 64  # requests sampling at once with batching (MAX_ROWS_IN_FLIGHT admits 64 of the largest)
PROGRESS = gr.Progress()  # the default gradio looks for; it is bound to each request when called


def sampler_name(field: str, value: object) -> str:
    """A sampler's label ("DPM-Solver++ 2M") or name ("dpm++2m") -> its name in model.samplers.SAMPLERS."""
    picked = choice(field, value, [*SAMPLER_LABELS, *SAMPLERS])
    return next(s.name for s in SAMPLERS.values() if picked in (s.label, s.name))


def sampler_hint(label: str) -> str:
    """The one-line hint the page shows under the sampler choice."""
    try:
        return f"*{SAMPLERS[sampler_name('sampler', label)].hint}.*"
    except InputError:
        return ""


def busy_as_message(steps):
    """A request's steps; a batcher that is full says so in the page, as a full queue does, with no traceback."""
    try:
        yield from steps
    except Busy as err:
        raise gr.Error(str(err), title="Busy", print_exception=False) from None


def invalid_input(message: str) -> gr.Error:
    """The user's mistake, shown in the page; not a server fault, so no traceback in the log."""
    return gr.Error(message, title="Invalid input", print_exception=False)


def read_upload(value: object, field: str = "sprite") -> np.ndarray | Image.Image | None:
    """An upload as the event receives it raw (a file's path, gradio's file dict, or an array from Python) ->
    a picture, or a plain message naming the field: not an image, or too large, with no traceback and no server
    path."""
    if value is None or isinstance(value, np.ndarray):
        return value
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str | Path):
        raise invalid_input(f"{field} must be an image file (PNG, GIF, JPEG, WebP or BMP)")
    too_large = f"{field}: image too large: at most {MAX_UPLOAD_SIDE} x {MAX_UPLOAD_SIDE} pixels"
    not_an_image = f"{field}: not an image: the file could not be read as PNG, GIF, JPEG, WebP or BMP"
    try:
        picture = Image.open(path)  # reads the header only: the size is known before any pixel is decoded
    except Image.DecompressionBombError as err:  # PIL's own limit (app.py sets it) is met before ours
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise invalid_input(too_large + (f", got {int(pixels[1]):,} pixels" if pixels else "")) from None
    except (OSError, ValueError):
        raise invalid_input(not_an_image) from None
    width, height = picture.size
    if width * height > MAX_UPLOAD_SIDE**2:
        raise invalid_input(f"{too_large}, got {width} x {height}")
    try:
        picture.load()
    except (OSError, ValueError):  # truncated or corrupt pixel data
        raise invalid_input(not_an_image) from None
    return picture


def quiet_about_uploads(handler: Callable, cleared: object) -> Callable:
    """``handler`` for a page event that follows a sprite box: an unreadable upload gives ``cleared`` instead of
    an error. SpriteApp.check_upload reports it once; each of the box's handlers raising it too showed the same
    message up to six times, and left the previous sprite's pictures on screen."""
    def call(*args):
        try:
            return handler(*args)
        except gr.Error:
            return cleared
    return call


class SpriteApp:
    """The event functions, bound to one pipeline loaded at startup (tests bind a tiny one)."""

    def __init__(self, pipe: SpritePipeline, file_dir: str | Path | None = None):
        self.pipe = pipe
        self.file_dir = Path(file_dir or tempfile.mkdtemp(prefix="sprite-diffusion-"))
        self.file_dir.mkdir(parents=True, exist_ok=True)
        self.examples, self.example_captions = _example_sprites(pipe.unet.config.sample_size)
        # Sampling requests run at once when the pipeline batches them (model/batching.py), else one at a time.
        self.sampling_limit = SAMPLING_IN_FLIGHT if pipe.batcher is not None else 1
        self.guess_curves = GuessCurves(pipe)

    def settings(self, context, weights, num_inference_steps, sampler, add_noise, noise_scale, guidance_scale,
                 num_images, seed, randomize_seed) -> dict:
        """Check every request value (API calls never went through the sliders) -> pipeline arguments."""
        names = self.pipe.context_names
        try:
            picked = choice("context", context, [*names, MIXED, UNCONDITIONAL])
            if picked == MIXED:
                picked = weight_vector("weights", weights, names, MAX_WEIGHT)
            elif picked == UNCONDITIONAL:
                picked = None
            return dict(context=picked,
                        **self.run_settings(num_inference_steps, sampler, add_noise, noise_scale, guidance_scale, seed,
                                            randomize_seed),
                        num_images=whole_number("Number of sprites (num_images)", num_images, 1, MAX_IMAGES))
        except InputError as err:
            raise invalid_input(str(err)) from None

    def run_settings(self, num_inference_steps, sampler, add_noise, noise_scale, guidance_scale, seed,
                     randomize_seed) -> dict:
        """The checked values every sampling event shares (raises InputError): steps, sampler, noise, guidance and
        the seed (a random one when asked)."""
        chosen_seed = (random.randint(0, MAX_SEED) if flag("randomize_seed", randomize_seed)
                       else whole_number("Seed (seed)", seed, 0, MAX_SEED))
        return dict(
            num_inference_steps=whole_number("Steps (num_inference_steps)", num_inference_steps, 1,
                                             self.pipe.num_train_steps),
            sampler=sampler_name("sampler", sampler),
            add_noise=flag("add_noise", add_noise),
            noise_scale=real_number("Noise scale (noise_scale)", noise_scale, 0.0, MAX_SCALE),
            guidance_scale=real_number("Guidance scale (guidance_scale)", guidance_scale, 0.0, MAX_SCALE),
            seed=chosen_seed,
        )

    def generate(self, context: str = "hero", weights: str = "", num_inference_steps: int = DEFAULT_STEPS,
                 sampler: str = DEFAULT_SAMPLER, add_noise: bool = True, noise_scale: float = 1.0,
                 guidance_scale: float = DEFAULT_GUIDANCE, num_images: int = 16, seed: int = 0,
                 randomize_seed: bool = False,
                 progress: gr.Progress = PROGRESS):
        """Stream sampling: (samples x_t, predicted x0, final grid, GIF, sprite sheet, stats, seed).

        The first update follows the first step; later ones come at most every LIVE_INTERVAL_S. The final sprites
        come in an update of their own, and the GIF and the sheet in the last one, made while the page draws them.
        """
        args = self.settings(context, weights, num_inference_steps, sampler, add_noise, noise_scale,
                             guidance_scale, num_images, seed, randomize_seed)
        n, seed = args["num_inference_steps"], args["seed"]
        try:
            steps = self.pipe.denoise(**args)
        except ValueError as err:
            raise invalid_input(str(err)) from None
        every = max(1, n // LIVE_FRAMES)
        frames = []
        start = time.perf_counter()
        shown = reported = start - LIVE_INTERVAL_S
        for step in busy_as_message(steps):
            last = step.index == n - 1
            if time.perf_counter() - reported >= LIVE_INTERVAL_S or last:
                progress((step.index + 1, n), desc="Denoising", unit="steps")
                reported = time.perf_counter()
            if step.index % every and not last:
                continue
            sprites = to_uint8(step.sample)
            frames.append(current := display_grid(sprites, LIVE_WIDTH))
            if not last and time.perf_counter() - shown < LIVE_INTERVAL_S:
                continue  # a GIF frame only: the page shows no more than an eye follows
            predicted = display_grid(to_uint8(step.predicted_clean), LIVE_WIDTH)
            if not last:
                yield current, predicted, None, None, None, f"Step {step.index + 1} of {n}: t = {step.timestep}", seed
                shown = time.perf_counter()
        seconds = time.perf_counter() - start
        stats = (f"**{len(sprites)} sprite{'s' if len(sprites) > 1 else ''}, {n} {SAMPLERS[args['sampler']].label} "
                 f"steps in {seconds:.2f} s** "
                 f"({n / seconds:.1f} steps/s), seed {seed}")
        if args["guidance_scale"] not in (0.0, 1.0):  # a distilled model guides in one pass, within its scales
            one = self.pipe.unet_rows(1, args["guidance_scale"]) == 1
            stats += f" · guidance {args['guidance_scale']:g} in {'one U-Net pass' if one else 'two U-Net passes'}"
        if getattr(self.pipe, "compiling", False):
            stats += " · this run was eager: the compiled U-Net is still being built (a minute or two after a start)"
        elif getattr(self.pipe, "compile_error", None):
            stats += " · eager (uncompiled): torch.compile is unavailable on this machine"
        final = display_grid(sprites, FINAL_WIDTH)
        yield current, predicted, final, None, None, stats, seed
        name = uuid.uuid4().hex[:12]
        gif = save_gif(frames, self.file_dir / f"denoising-{name}.gif")
        sheet = save_sheet(sprites, self.file_dir / f"sprites-{name}.png")
        yield current, predicted, final, str(gif), str(sheet), stats, seed

    def compare(self, context: str = "hero", weights: str = "", num_inference_steps: int = COMPARE_STEPS,
                noise_scale: float = 1.0, guidance_scale: float = DEFAULT_GUIDANCE, num_images: int = 16, seed: int = 0,
                randomize_seed: bool = False, progress: gr.Progress = PROGRESS):
        """DDPM from one seed with and without noise re-adding: (with, without, caption, seed)."""
        args = self.settings(context, weights, num_inference_steps, "DDPM", True, noise_scale, guidance_scale,
                             num_images, seed, randomize_seed)
        n = args["num_inference_steps"]
        grids = []
        for run, add_noise in enumerate((True, False)):
            def report(index, *_, run=run):
                progress((run * n + index + 1, 2 * n), desc="Noise on" if run == 0 else "Noise off", unit="steps")

            try:
                out = self.pipe(**{**args, "add_noise": add_noise}, callback=report)
            except ValueError as err:
                raise invalid_input(str(err)) from None
            grids.append(display_grid(out.array, FINAL_WIDTH))
        caption = (f"Same seed ({args['seed']}), same {n} DDPM steps. Left: fresh noise s3·z is re-added at each "
                   "step. Right: z = 0, so samples drift off what the network was trained on and collapse.")
        return grids[0], grids[1], caption, args["seed"]

    def compare_samplers(self, context: str = "hero", weights: str = "", num_inference_steps: int = DEFAULT_STEPS,
                         guidance_scale: float = DEFAULT_GUIDANCE, num_images: int = 16, seed: int = 0,
                         randomize_seed: bool = False, samplers: list[str] | None = None,
                         progress: gr.Progress = PROGRESS):
        """One seed, the same starting noise, each chosen sampler at the same steps: streams (gallery, seed) as
        each sampler finishes, every grid captioned with its time."""
        args = self.settings(context, weights, num_inference_steps, "DDIM", True, 1.0, guidance_scale,
                             num_images, seed, randomize_seed)
        chosen = COMPARED_SAMPLERS if samplers is None else samplers
        if isinstance(chosen, str) or not isinstance(chosen, list | tuple) or not chosen:
            raise invalid_input(f"samplers must be a list of one or more of {', '.join(SAMPLER_LABELS)}")
        try:
            names = list(dict.fromkeys(sampler_name("samplers", label) for label in chosen))
        except InputError as err:
            raise invalid_input(str(err)) from None
        n, gallery = args["num_inference_steps"], []
        for run, name in enumerate(names):
            def report(index, *_, run=run, label=SAMPLERS[name].label):
                progress((run * n + index + 1, len(names) * n), desc=label, unit="steps")

            start = time.perf_counter()
            out = self.pipe(**{**args, "sampler": name}, callback=report)
            seconds = time.perf_counter() - start
            gallery.append((display_grid(out.array, LIVE_WIDTH * 2), f"{SAMPLERS[name].label}: {n} steps, "
                                                                      f"{seconds:.2f} s"))
            yield list(gallery), args["seed"]

    def walk(self, start: str = "hero", end: str = "food", stops: int = WALK_STOPS, num_images: int = WALK_SPRITES,
             num_inference_steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER,
             guidance_scale: float = DEFAULT_GUIDANCE, seed: int = 0, randomize_seed: bool = False,
             progress: gr.Progress = PROGRESS):
        """From one context to another in even steps of the weights, every stop from the same seed: streams
        (grid, caption, seed), a column per stop filled in as it finishes."""
        names = self.pipe.context_names
        try:
            ends = [None if c == UNCONDITIONAL else c
                    for c in (choice("start", start, [*names, UNCONDITIONAL]),
                              choice("end", end, [*names, UNCONDITIONAL]))]
            stops = whole_number("Stops (stops)", stops, 2, MAX_STOPS)
            num_images = whole_number("Sprites per stop (num_images)", num_images, 1, MAX_WALK_SPRITES)
            args = self.run_settings(num_inference_steps, sampler, True, 1.0, guidance_scale, seed, randomize_seed)
        except InputError as err:
            raise invalid_input(str(err)) from None
        n = args["num_inference_steps"]
        sampling = {k: args[k] for k in ("num_inference_steps", "sampler", "guidance_scale")}
        columns, labels = [], []

        def report(index, *_):
            progress((len(columns) * n + index + 1, stops * n), desc=f"Stop {len(columns) + 1} of {stops}",
                     unit="steps")

        walk = context_walk(self.pipe, *ends, stops, num_images, args["seed"], **sampling, callback=report)
        for weights, sprites in busy_as_message(walk):
            columns.append(sprites)
            labels.append(_format_weights(np.round(weights, 2)))
            caption = (f"Seed {args['seed']}, {n} {SAMPLERS[args['sampler']].label} steps, guidance "
                       f"{args['guidance_scale']:g}. Columns, left to right, get the context vectors: "
                       + " · ".join(f"[{w}]" for w in labels))
            yield display_grid(walk_sprites(columns, stops), FINAL_WIDTH, ncols=stops), caption, args["seed"]

    @staticmethod
    def check_upload(sprite: object) -> None:
        """The one message for an unreadable upload (the page then clears the box: nothing of it stays)."""
        read_upload(sprite)

    def forward(self, sprite: np.ndarray | dict | str | None, t: int = 250):
        """The forward process on one sprite: (x_t, strip at t = 0/100/250/500, formula)."""
        try:
            t = whole_number("t", t, 0, self.pipe.num_train_steps)
        except InputError as err:
            raise invalid_input(str(err)) from None
        picture = read_upload(sprite)
        if picture is None:
            return None, [], "Pick a sprite or upload an image."
        return forward_view(self.pipe, self.as_sprite(picture), t)

    def predict(self, sprite: np.ndarray | dict | str | None, t: int = 250, context: str = UNCONDITIONAL):
        """What the network makes of the forward tab's x_t: (noise eps, predicted eps_hat, predicted x0_hat,
        caption). One U-Net call, no guidance."""
        clean, t, told = self.guess_request(sprite, t, context)
        if clean is None:
            return None, None, None, "Pick a sprite or upload an image."
        return network_guess(self.pipe, clean, t, told)

    def guess_plot(self, sprite: np.ndarray | dict | str | None, t: int = 250, context: str = UNCONDITIONAL):
        """The same guess at every t (one U-Net call per sprite and context), marked at the tab's t."""
        clean, t, told = self.guess_request(sprite, t, context)
        return None if clean is None else self.guess_curves.figure(clean, t, told)

    def guess_request(self, sprite, t, context) -> tuple[np.ndarray | None, int, str | None]:
        """The forward tab's checked (sprite or None, t, context name or None for unconditional)."""
        try:
            t = whole_number("t", t, 0, self.pipe.num_train_steps)
            picked = choice("context", context, [*self.pipe.context_names, UNCONDITIONAL])
        except InputError as err:
            raise invalid_input(str(err)) from None
        picture = read_upload(sprite)
        return (None if picture is None else self.as_sprite(picture)), t, (None if picked == UNCONDITIONAL else picked)

    def example_context(self, evt: gr.SelectData) -> str:
        """A click on a dataset sprite tells the network that sprite's own context."""
        return self.example_captions[evt.index]

    def schedule_plot(self, t: int = 250):
        """The schedule's signal and noise shares and log SNR, marked at the forward tab's t."""
        try:
            t = whole_number("t", t, 0, self.pipe.num_train_steps)
        except InputError as err:
            raise invalid_input(str(err)) from None
        return schedule_figure(self.pipe.noise_schedule, t)

    def as_sprite(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Any uploaded picture -> (R, R, 3) uint8 at the model's resolution."""
        size = self.pipe.unet.config.sample_size
        if isinstance(image, Image.Image):
            picture = image
        elif isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.size:
            picture = Image.fromarray(image.astype(np.uint8))
        else:
            raise invalid_input("sprite must be an image")
        return fit_sprite(picture, size)  # the pipeline's fitting, shared with redraw and inpaint

    def warm_up_note(self):
        """While the U-Net compiles after a start: a line saying so, and the timer keeps polling. Then none, or,
        where compiling failed, a line saying that every run is uncompiled."""
        if getattr(self.pipe, "compiling", False):
            return (gr.Markdown("**Warming up**: compiling the U-Net (a few minutes after a start). Requests run "
                                "meanwhile on the uncompiled U-Net while the compile takes most of the CPU, so the "
                                "first ones can take several times longer than later ones.", visible=True),
                    gr.skip())
        if error := getattr(self.pipe, "compile_error", None):
            return (gr.Markdown(f"**Running uncompiled**: torch.compile is unavailable on this machine ({error}), "
                                "so every run uses the eager U-Net, slower than a compiled one.", visible=True),
                    gr.Timer(active=False))
        return gr.Markdown(visible=False), gr.Timer(active=False)

    def offline_api_examples(self, demo: gr.Blocks) -> Path:
        """Every picture input's example in the API page and ``view_api``: a dataset sprite in a file on this
        machine (gradio's own is a picture on the web, which an offline Space cannot fetch). Returns the file."""
        picture = self.file_dir / "example-sprite.png"
        size = self.pipe.unet.config.sample_size
        sprite = self.examples[0] if self.examples is not None else np.full((size, size, 3), 255, np.uint8)
        upscale(sprite, 4).save(picture)
        # "url": None, because gradio copies the example's url into a file input's default value ("to pass SSRF
        # checks"); a web address there is the one thing an offline Space cannot fetch.
        example = {**handle_file(str(picture)), "url": None}
        for block in demo.blocks.values():
            if isinstance(block, gr.ImageEditor):
                block.example_payload = lambda: {"background": example, "layers": [], "composite": None}
            elif isinstance(block, gr.Image):
                block.example_payload = lambda: example
            else:
                continue
            block.example_value = lambda: str(picture)
        return picture

    def pick_example(self, evt: gr.SelectData):
        """A click on a dataset sprite puts it (enlarged) into the sprite box."""
        return upscale(self.examples[evt.index], 16)


def _example_sprites(resolution: int, per_context: int = 5) -> tuple[np.ndarray | None, list[str]]:
    """A few bundled sprites of each kind for the forward tab, or (None, []) without the dataset."""
    try:
        images, labels, names = default_sprites(resolution)
    except (OSError, ValueError):
        return None, []
    chosen, captions = [], []
    for c, name in enumerate(names):
        members = np.flatnonzero(labels[:, c])
        for i in np.linspace(0, len(members) - 1, per_context).astype(int):
            chosen.append(members[i])
            captions.append(name)
    return images[chosen], captions


def _one_hot(context: str, names: list[str]) -> list:
    """Picking one context shows its one-hot vector in the mixing panel (all zeros for "none": the U-Net then
    gets no context); picking "mix" opens the panel and keeps the weights."""
    if context == MIXED or context not in [*names, UNCONDITIONAL]:
        return [gr.skip()] * (len(names) + 1) + [gr.Accordion(open=True) if context == MIXED else gr.skip()]
    weights = [1.0 if n == context else 0.0 for n in names]
    return [*weights, _format_weights(weights), gr.skip()]


def _sliders_from_text(text: str, names: list[str]) -> list:
    """A typed context vector moves the sliders (within their 0-2 range); one that does not parse moves nothing,
    and Generate then says what is wrong with it."""
    try:
        weights = weight_vector("weights", text, names, MAX_WEIGHT)
    except InputError:
        return [gr.skip()] * len(names) + [MIXED]
    return [min(w, 2.0) for w in weights] + [MIXED]


def _format_weights(weights) -> str:
    return ", ".join(f"{w:g}" for w in weights)


