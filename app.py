"""Sprite Diffusion: watch a diffusion model turn noise into 16x16 game sprites, step by step.

A Gradio Space after DeepLearning.AI's "How Diffusion Models Work". This file is UI wiring
only: sampling, the noise schedule and model loading live in model/.

    python app.py                       # the bundled model (model/default)
    MODEL_ID=user/repo python app.py    # a Hub model repo (or a local folder); MODEL_REVISION pins it
"""

import os

# gradio and huggingface_hub read these when imported, so they are set first.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio import route_utils  # noqa: E402
from PIL import Image  # noqa: E402

from model import MAX_IMAGES, ModelLoadError, SpritePipeline, load_pipeline, to_uint8, upscale  # noqa: E402
from model.gallery import display_grid, noisy_copies, save_gif, save_sheet  # noqa: E402
from model.inputs import InputError, choice, flag, real_number, weight_vector, whole_number  # noqa: E402

try:  # ZeroGPU hardware on Spaces; elsewhere the decorator changes nothing
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    def gpu(fn):
        return fn

try:  # the bundled sprites for the forward-process tab; without them, uploads still work
    from training.sprite_data import default_sprites, fit_pixel_art
except ImportError:
    default_sprites = fit_pixel_art = None

MIXED, UNCONDITIONAL = "mixed", "unconditional"
SAMPLERS = {"DDPM": "ddpm", "DDIM": "ddim"}
MAX_SEED = 2**31 - 1
MAX_WEIGHT = 10.0  # per context; the sliders stop at 2
MAX_SCALE = 20.0  # guidance and noise scale, as the pipeline allows
# Chosen by the quality study (docs/study.md): with the bundled model, DDIM 10 and guidance 2 keep the context
# accuracy of 25-50 steps and draw 16 sprites in about 1.4 s on a 2-core CPU (compiled); DDPM 500 takes ~90 s.
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "DDIM", 10, 2.0
LIVE_FRAMES = 20  # streamed updates (and GIF frames) per run
# Grid widths in pixels, enlarged by whole numbers; the browser scales the live ones up, still crisp.
LIVE_WIDTH, FINAL_WIDTH = 160, 560
STRIP = (0, 100, 250, 500)  # the forward-process strip, as the course draws it
QUEUE_SIZE = 16
# gradio decodes an upload before any check of ours, and a small PNG can hold a huge blank canvas: PIL refuses
# pictures over twice this many pixels (2048 x 2048), so one upload cannot take gigabytes of memory.
Image.MAX_IMAGE_PIXELS = 2048 * 2048 // 2
PROGRESS = gr.Progress()  # the default gradio looks for; it is bound to each request when called
CSS = """
.pixelated img, img.pixelated, .pixelated canvas { image-rendering: pixelated; }
#model-note p { margin: 0; }
.fill .image-frame, .fill img { width: 100%; height: auto; object-fit: contain; }
"""


def invalid_input(message: str) -> gr.Error:
    """The user's mistake, shown in the page; not a server fault, so no traceback in the log."""
    return gr.Error(message, title="Invalid input", print_exception=False)


class SpriteApp:
    """The event functions, bound to one pipeline loaded at startup (tests bind a tiny one)."""

    def __init__(self, pipe: SpritePipeline, file_dir: str | Path | None = None):
        self.pipe = pipe
        self.file_dir = Path(file_dir or tempfile.mkdtemp(prefix="sprite-diffusion-"))
        self.file_dir.mkdir(parents=True, exist_ok=True)
        self.examples, self.example_captions = _example_sprites(pipe.unet.config.sample_size)

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
            chosen_seed = (random.randint(0, MAX_SEED) if flag("randomize_seed", randomize_seed)
                           else whole_number("seed", seed, 0, MAX_SEED))
            return dict(
                context=picked,
                num_inference_steps=whole_number("num_inference_steps", num_inference_steps, 1,
                                                 self.pipe.num_train_steps),
                sampler=SAMPLERS[choice("sampler", sampler, list(SAMPLERS))],
                add_noise=flag("add_noise", add_noise),
                noise_scale=real_number("noise_scale", noise_scale, 0.0, MAX_SCALE),
                guidance_scale=real_number("guidance_scale", guidance_scale, 0.0, MAX_SCALE),
                num_images=whole_number("num_images", num_images, 1, MAX_IMAGES),
                seed=chosen_seed,
            )
        except InputError as err:
            raise invalid_input(str(err)) from None

    def generate(self, context: str = "hero", weights: str = "", num_inference_steps: int = DEFAULT_STEPS,
                 sampler: str = DEFAULT_SAMPLER, add_noise: bool = True, noise_scale: float = 1.0,
                 guidance_scale: float = DEFAULT_GUIDANCE, num_images: int = 16, seed: int = 0,
                 randomize_seed: bool = False,
                 progress: gr.Progress = PROGRESS):
        """Stream sampling: (samples x_t, predicted x0, final grid, GIF, sprite sheet, stats, seed).

        The first update follows the first step; later ones come every few steps, and the
        final sprites, sheet and GIF come with the last update only.
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
        for step in steps:
            progress((step.index + 1, n), desc="Denoising", unit="steps")
            if step.index % every and step.index < n - 1:
                continue
            sprites = to_uint8(step.sample)
            current = display_grid(sprites, LIVE_WIDTH)
            predicted = display_grid(to_uint8(step.predicted_clean), LIVE_WIDTH)
            frames.append(current)
            if step.index < n - 1:
                yield current, predicted, None, None, None, f"Step {step.index + 1} of {n}: t = {step.timestep}", seed
        seconds = time.perf_counter() - start
        name = uuid.uuid4().hex[:12]
        gif = save_gif(frames, self.file_dir / f"denoising-{name}.gif")
        sheet = save_sheet(sprites, self.file_dir / f"sprites-{name}.png")
        stats = (f"**{len(sprites)} sprites, {n} {args['sampler'].upper()} steps in {seconds:.2f} s** "
                 f"({n / seconds:.1f} steps/s), seed {seed}")
        if getattr(self.pipe, "compiling", False):
            stats += " · this run was eager: the compiled U-Net is still being built (a minute or two after a start)"
        yield current, predicted, display_grid(sprites, FINAL_WIDTH), str(gif), str(sheet), stats, seed

    def compare(self, context: str = "hero", weights: str = "", num_inference_steps: int = DEFAULT_STEPS,
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

    def forward(self, sprite: np.ndarray | None, t: int = 250):
        """The forward process on one sprite: (x_t, strip at t = 0/100/250/500, formula)."""
        if sprite is None:
            return None, [], "Pick a sprite or upload an image."
        try:
            t = whole_number("t", t, 0, self.pipe.num_train_steps)
        except InputError as err:
            raise invalid_input(str(err)) from None
        clean = self.as_sprite(sprite)
        copies = noisy_copies(clean, self.pipe.noise_schedule, [t, *STRIP])
        ab = float(self.pipe.noise_schedule.alpha_bar[t])
        formula = (f"$$x_{{{t}}} = \\sqrt{{\\bar\\alpha_{{{t}}}}}\\,x_0 + \\sqrt{{1-\\bar\\alpha_{{{t}}}}}\\,\\epsilon"
                   f" = {ab ** 0.5:.3f}\\,x_0 + {(1 - ab) ** 0.5:.3f}\\,\\epsilon$$")
        strip = [(upscale(c, 8), f"t = {s}") for c, s in zip(copies[1:], STRIP, strict=True)]
        return upscale(copies[0], 16), strip, formula

    def as_sprite(self, image: np.ndarray) -> np.ndarray:
        """Any uploaded picture -> (R, R, 3) uint8 at the model's resolution."""
        size = self.pipe.unet.config.sample_size
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
            raise invalid_input("the sprite must be an image")
        picture = Image.fromarray(image.astype(np.uint8))
        if fit_pixel_art is not None:
            return fit_pixel_art(picture, size)
        return np.asarray(picture.convert("RGB").resize((size, size), Image.BOX))

    def pick_example(self, evt: gr.SelectData):
        """A click on a dataset sprite puts it (enlarged) into the sprite box."""
        return upscale(self.examples[evt.index], 16)


def _example_sprites(resolution: int, per_context: int = 5) -> tuple[np.ndarray | None, list[str]]:
    """A few bundled sprites of each kind for the forward tab, or (None, []) without the dataset."""
    if default_sprites is None:
        return None, []
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
    """Picking one context shows its one-hot vector in the mixing panel; picking "mix" opens the panel."""
    if context not in names:
        return [gr.skip()] * (len(names) + 1) + [gr.Accordion(open=True) if context == MIXED else gr.skip()]
    weights = [1.0 if n == context else 0.0 for n in names]
    return [*weights, _format_weights(weights), gr.skip()]


def _format_weights(weights) -> str:
    return ", ".join(f"{w:g}" for w in weights)


def build_demo(pipe: SpritePipeline, model_note: str = "", file_dir: str | Path | None = None) -> gr.Blocks:
    """The whole page for one loaded pipeline."""
    names = pipe.context_names
    with gr.Blocks(title="Sprite Diffusion", delete_cache=(600, 1800)) as demo:
        events = SpriteApp(pipe, file_dir or Path(demo.GRADIO_CACHE) / "sprite-diffusion")
        size = pipe.unet.config.sample_size
        gr.Markdown(f"# Sprite Diffusion\nWatch a diffusion model turn pure noise into {size}×{size} game sprites, "
                    "one denoising step at a time, as in DeepLearning.AI's *How Diffusion Models Work*.")
        gr.Markdown(f"{model_note} Contexts: {', '.join(names)}.", elem_id="model-note")

        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    special = [("mix (weights below)", MIXED), ("none (unconditional)", UNCONDITIONAL)]
                    context = gr.Radio([*names, *special], value=names[0], label="Context",
                                       info="What kind of sprite to draw")
                    with gr.Accordion("Mix contexts", open=False) as mixer:
                        sliders = [gr.Slider(0, 2, value=float(i == 0), step=0.05, label=n)
                                   for i, n in enumerate(names)]
                        weights = gr.Textbox(_format_weights(s.value for s in sliders), label="Context vector",
                                             info="One weight per context, as the U-Net receives it")
                    sampler = gr.Radio(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler",
                                       info="DDIM is deterministic and needs fewer steps")
                    steps = gr.Slider(1, pipe.num_train_steps, value=DEFAULT_STEPS, step=1, label="Steps")
                    with gr.Row():
                        add_noise = gr.Checkbox(True, label="Re-add noise (s3·z)",
                                                info="DDPM only; off shows the collapse")
                        noise_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Noise scale")
                    guidance = gr.Slider(0, 5, value=DEFAULT_GUIDANCE, step=0.1, label="Guidance scale",
                                         info="1 is off; above 1 pushes away from the unconditional sprite")
                    num_images = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Number of sprites")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                        randomize = gr.Checkbox(True, label="Randomise seed")
                    generate_button = gr.Button("Generate", variant="primary", size="lg")
                    compare_button = gr.Button("Compare: noise re-adding on vs off")
                with gr.Column(scale=2):
                    with gr.Row():
                        current = gr.Image(label="Current samples xₜ", format="png", elem_id="live-samples",
                                           elem_classes=["pixelated", "fill"])
                        predicted = gr.Image(label="Predicted clean sprites x̂₀", format="png",
                                             elem_classes=["pixelated", "fill"])
                    stats = gr.Markdown("Press **Generate** to start from pure noise.")
                    with gr.Row():
                        final = gr.Image(label="Final sprites", format="png", elem_classes="pixelated",
                                         elem_id="final-grid", buttons=["download", "fullscreen"], scale=3)
                        with gr.Column(scale=2, min_width=200):
                            gif = gr.Image(label="Denoising trajectory (GIF)", type="filepath",
                                           elem_classes=["pixelated", "fill"])
                            sheet = gr.File(label="Sprite sheet (PNG, native size)")
            with gr.Group(visible=False) as compare_group:
                with gr.Row():
                    with_noise = gr.Image(label="With noise re-adding", format="png", elem_classes="pixelated")
                    without_noise = gr.Image(label="Without noise re-adding (z = 0)", format="png",
                                             elem_classes="pixelated")
                compare_note = gr.Markdown(padding=True)

        with gr.Tab("Forward process"):
            gr.Markdown("Training shows the network sprites with noise added. Pick a sprite and move *t*: "
                        "at t = 0 it is clean, at t = 500 almost pure noise.")
            with gr.Row():
                with gr.Column():
                    first = upscale(events.examples[0], 16) if events.examples is not None else None
                    sprite = gr.Image(first, label="Sprite x₀ (pick below or upload)", type="numpy",
                                      image_mode="RGBA", sources=["upload"], format="png", elem_classes="pixelated")
                    if events.examples is not None:
                        example_gallery = gr.Gallery(
                            [(upscale(s, 4), c) for s, c in zip(events.examples, events.example_captions, strict=True)],
                            label="Dataset sprites (click one)", columns=5, height="auto", allow_preview=False,
                            format="png", elem_classes="pixelated")
                    else:
                        gr.Markdown("The bundled dataset is not available here: upload a sprite instead.")
                with gr.Column():
                    t_slider = gr.Slider(0, pipe.num_train_steps, value=250, step=1, label="Timestep t")
                    start = events.forward(np.asarray(first), 250) if first is not None else (None, [], "")
                    noisy = gr.Image(start[0], label="Noisy sprite xₜ", format="png", elem_classes="pixelated")
                    formula = gr.Markdown(start[2])
                    strip = gr.Gallery(start[1], label="The same sprite at t = 0, 100, 250, 500", columns=4,
                                       height="auto", allow_preview=False, format="png", elem_classes="pixelated")

        with gr.Tab("About"):
            gr.Markdown(ABOUT, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                 {"left": "$", "right": "$", "display": False}])

        # ---- events -------------------------------------------------------------------------
        # preprocess=False: the sampler events get the raw request values and check them all.
        sample_inputs = [context, weights, steps, sampler, add_noise, noise_scale, guidance, num_images, seed,
                         randomize]
        generate_button.click(gpu(events.generate), sample_inputs, [current, predicted, final, gif, sheet, stats, seed],
                              api_name="generate", preprocess=False, concurrency_id="sampler",
                              concurrency_limit=1, show_progress_on=[final])
        compare_inputs = [context, weights, steps, noise_scale, guidance, num_images, seed, randomize]
        compare_button.click(lambda: gr.Group(visible=True), None, compare_group, api_visibility="private",
                             queue=False, show_progress="hidden")
        compare_button.click(gpu(events.compare), compare_inputs, [with_noise, without_noise, compare_note, seed],
                             api_name="compare", preprocess=False, concurrency_id="sampler", concurrency_limit=1,
                             show_progress_on=[with_noise, without_noise])
        t_slider.change(events.forward, [sprite, t_slider], [noisy, strip, formula], api_name="forward",
                        concurrency_limit=4, trigger_mode="always_last", show_progress="hidden")
        sprite.change(events.forward, [sprite, t_slider], [noisy, strip, formula], api_visibility="private",
                      concurrency_limit=4, trigger_mode="always_last", show_progress="hidden")
        if events.examples is not None:
            example_gallery.select(events.pick_example, None, sprite, api_visibility="private", queue=False)

        # Mixing panel: moving a weight selects "mix"; picking one context shows its one-hot vector.
        for slider in sliders:
            slider.input(lambda *w: (_format_weights(w), MIXED), sliders, [weights, context],
                         api_visibility="private", queue=False, show_progress="hidden")
        weights.input(lambda: MIXED, None, context, api_visibility="private", queue=False, show_progress="hidden")
        context.input(lambda c: _one_hot(c, names), context, [*sliders, weights, mixer], api_visibility="private",
                      queue=False, show_progress="hidden")
    return demo


ABOUT = (Path(__file__).resolve().parent / "docs" / "about.md").read_text()  # the About tab


def load_model() -> tuple[SpritePipeline, str]:
    """The MODEL_ID model when set and loadable, else the bundled one; the note says which, and why."""
    device = "cuda" if torch.cuda.is_available() else None
    model_id = os.environ.get("MODEL_ID", "").strip()
    revision = os.environ.get("MODEL_REVISION", "").strip() or None
    if not model_id:
        return load_pipeline(device=device), "**Model:** the bundled default."
    try:
        pipe = load_pipeline(model_id, revision, device=device)
    except ModelLoadError as err:
        pipe = load_pipeline(device=device)
        return pipe, f"⚠️ **Could not load MODEL_ID:** {err}. Running the bundled model instead."
    return pipe, f"**Model:** `{model_id}`" + (f" at revision `{revision}`" if revision else "") + "."


_gradio_cleanup = route_utils.delete_files_created_by_app


def _cleanup_on_snapshots(blocks: gr.Blocks, age: int | None) -> None:
    """gradio's periodic deletion of generated files, run on copies of its file sets.

    Requests add files to those sets while the deletion runs; gradio 6.31 loops over the live sets, fails with
    "Set changed size during iteration", and its cleanup task then stops for good: files pile up on a busy Space.
    """
    live = blocks.temp_file_sets
    before = [files.copy() for files in live]  # set.copy() holds the GIL: a consistent snapshot
    blocks.temp_file_sets = [files.copy() for files in before]
    try:
        _gradio_cleanup(blocks, age)
    finally:
        left, blocks.temp_file_sets = blocks.temp_file_sets, live
        for files, old, kept in zip(live, before, left, strict=True):
            files -= old - kept


route_utils.delete_files_created_by_app = _cleanup_on_snapshots  # where gradio's cleanup task looks it up


def launch(demo: gr.Blocks, **kwargs):
    """Start the server with a bounded queue; a full queue answers "busy" at once."""
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo.launch(css=CSS, show_error=True, max_file_size="2mb", **kwargs)


def __getattr__(name: str):
    """`app.demo`, built on first use, for tools that import this file (gradio's reload mode)."""
    if name == "demo":
        globals()["demo"] = build_demo(*load_model())
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    global demo
    try:
        pipe, note = load_model()
    except ModelLoadError as err:
        raise SystemExit(f"Sprite Diffusion cannot start: {err}") from None
    demo = build_demo(pipe, note)
    pipe.compile_in_background()  # serves eager until compiled (docs/performance.md)
    launch(demo)


if __name__ == "__main__":
    main()
