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

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import model  # noqa: E402
from model import MAX_IMAGES, ModelLoadError, SpritePipeline, load_pipeline, upscale  # noqa: E402
from model.batching import BUCKETS  # noqa: E402
from model.unet import describe_unet  # noqa: E402
from model.walk import MAX_STOPS  # noqa: E402
from ui import gradio_fixes  # noqa: E402, F401  (installs fixes to gradio's file cache)
from ui.events import (  # noqa: E402, F401  (names tests and benchmarks read as app.X)
    COMPARE_STEPS,
    COMPARED_SAMPLERS,
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    LIVE_FRAMES,
    MAX_SEED,
    MAX_WALK_SPRITES,
    MIXED,
    SAMPLER_LABELS,
    SAMPLING_IN_FLIGHT,
    UNCONDITIONAL,
    WALK_SPRITES,
    WALK_STOPS,
    SpriteApp,
    _format_weights,
    _one_hot,
    _sliders_from_text,
    invalid_input,
    quiet_about_uploads,
    sampler_hint,
)
from ui.redraw import build_redraw_tab  # noqa: E402

try:  # ZeroGPU hardware on Spaces; elsewhere the decorator changes nothing
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    def gpu(fn):
        return fn

QUEUE_SIZE = 256  # requests waiting beyond those sampling; a full queue answers "busy" at once
# gradio decodes an upload before any check of ours, and a small PNG can hold a huge blank canvas: PIL refuses
# pictures over twice this many pixels (2048 x 2048), so one upload cannot take gigabytes of memory.
Image.MAX_IMAGE_PIXELS = 2048 * 2048 // 2
UI = Path(__file__).resolve().parent / "ui"
CSS = (UI / "page.css").read_text()  # the page's style
HEAD = (UI / "head.html").read_text()  # its one script: what number boxes send
SHOW_RESULTS = """() => {
  const results = document.querySelector("#live-samples");
  if (results && results.getBoundingClientRect().top > window.innerHeight * 0.6)
    results.scrollIntoView({block: "start"});
}"""


def build_demo(pipe: SpritePipeline, model_note: str = "", file_dir: str | Path | None = None) -> gr.Blocks:
    """The whole page for one loaded pipeline."""
    names = pipe.context_names
    with gr.Blocks(title="Sprite Diffusion", delete_cache=(600, 1800)) as demo:
        events = SpriteApp(pipe, file_dir or Path(demo.GRADIO_CACHE) / "sprite-diffusion")
        size = pipe.unet.config.sample_size
        gr.Markdown(f"# Sprite Diffusion\nWatch a diffusion model turn pure noise into {size}×{size} game sprites, "
                    "one denoising step at a time, as in DeepLearning.AI's *How Diffusion Models Work*.")
        gr.Markdown(f"{model_note} Contexts: {', '.join(names)}.", elem_id="model-note")
        warm_up = gr.Markdown(visible=False, elem_id="warm-up")
        warm_up_timer = gr.Timer(2)  # polls the background compile until it ends, then stops

        with gr.Tab("Generate"):
            with gr.Row():
                # The controls stay in view with their own scrolling list above the run buttons (ui/page.css), so a
                # 1280x800 screen shows Generate and the results at once; a phone pins Generate to the screen's foot.
                with gr.Column(scale=1, min_width=320, elem_id="controls"):
                    with gr.Column(elem_id="control-list"):
                        special = [("mix (weights below)", MIXED), ("none (unconditional)", UNCONDITIONAL)]
                        context = gr.Radio([*names, *special], value=names[0], label="Context",
                                           info="What kind of sprite to draw")
                        with gr.Accordion("Mix contexts", open=False) as mixer:
                            sliders = [gr.Slider(0, 2, value=float(i == 0), step=0.05, label=n)
                                       for i, n in enumerate(names)]
                            weights = gr.Textbox(_format_weights(s.value for s in sliders), label="Context vector",
                                                 info="One weight per context, as the U-Net receives it")
                        sampler = gr.Radio(SAMPLER_LABELS, value=DEFAULT_SAMPLER, label="Sampler",
                                           info="DDPM and DDIM are the course's; the others come from diffusers")
                        hint = gr.Markdown(sampler_hint(DEFAULT_SAMPLER), elem_id="sampler-hint")
                        steps = gr.Slider(1, pipe.num_train_steps, value=DEFAULT_STEPS, step=1, label="Steps")
                        with gr.Row():
                            add_noise = gr.Checkbox(True, label="Re-add noise (s3·z)",
                                                    info="DDPM only; off shows the collapse")
                            noise_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Noise scale")
                        guidance = gr.Slider(0, 5, value=DEFAULT_GUIDANCE, step=0.1, label="Guidance scale",
                                             info="1 is off; above 1 pushes away from the unconditional sprite; "
                                                  "0 ignores the context")
                        num_images = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Number of sprites")
                        with gr.Row():
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                            # False is the API's default (predict(seed=42) means seed 42); the page ticks it on load
                            randomize = gr.Checkbox(False, label="Randomise seed")
                        with gr.Accordion("Compare samplers", open=False):
                            compared = gr.CheckboxGroup(SAMPLER_LABELS, value=COMPARED_SAMPLERS, label="Samplers",
                                                        info="Same seed and starting noise, the steps above")
                            samplers_button = gr.Button("Compare samplers")
                        with gr.Accordion("Walk from one context to another", open=False):
                            ends = [*names, ("none (unconditional)", UNCONDITIONAL)]
                            with gr.Row():
                                walk_start = gr.Dropdown(ends, value=names[0], label="From")
                                walk_end = gr.Dropdown(ends, value=names[min(2, len(names) - 1)], label="To")
                            with gr.Row():
                                walk_stops = gr.Slider(2, MAX_STOPS, value=WALK_STOPS, step=1, label="Stops")
                                walk_sprites = gr.Slider(1, MAX_WALK_SPRITES, value=WALK_SPRITES, step=1,
                                                         label="Sprites per stop")
                            gr.Markdown("Every stop starts from the same seed, with the sampler, steps and guidance "
                                        "above; only the context weights move, in even steps.")
                            walk_button = gr.Button("Walk")
                        with gr.Accordion("Compare: noise re-adding on vs off", open=False):
                            compare_steps = gr.Slider(2, pipe.num_train_steps, value=COMPARE_STEPS, step=1,
                                                      label="DDPM steps",
                                                      info="DDPM, with the context, guidance, sprites and seed above. "
                                                           "Re-adding noise needs DDPM's many small steps: over a few "
                                                           "big ones its noise is too coarse")
                            compare_button = gr.Button("Compare: noise re-adding on vs off")
                    with gr.Column(elem_id="run-buttons"):
                        generate_button = gr.Button("Generate", variant="primary", size="lg")
                with gr.Column(scale=2):
                    with gr.Row():
                        current = gr.Image(label="Current samples xₜ", format="png", elem_id="live-samples",
                                           elem_classes=["pixelated", "fill", "label-room"], buttons=[])
                        predicted = gr.Image(label="Predicted clean sprites x̂₀", format="png", elem_id="live-predicted",
                                             elem_classes=["pixelated", "fill", "label-room"], buttons=[])
                        final = gr.Image(label="Final sprites", format="png", elem_id="final-grid",
                                         elem_classes=["pixelated", "fill", "label-room"],
                                         buttons=["download", "fullscreen"])
                    stats = gr.Markdown("Press **Generate** to start from pure noise.", label="Run details")
                    with gr.Group(visible=False) as compare_group:  # where the eye is, above the final sprites
                        with gr.Row():
                            with_noise = gr.Image(label="With noise re-adding", format="png",
                                                  elem_classes=["pixelated", "label-room"])
                            without_noise = gr.Image(label="Without noise re-adding (z = 0)", format="png",
                                                     elem_classes=["pixelated", "label-room"])
                        compare_note = gr.Markdown(padding=True, label="Comparison note")
                    sampler_grids = gr.Gallery(label="Samplers side by side (one seed, the same starting noise)",
                                               columns=4, height="auto", allow_preview=False, format="png",
                                               elem_classes="pixelated", visible=False, elem_id="sampler-comparison")
                    with gr.Group(visible=False, elem_id="walk-group") as walk_group:
                        walk_grid = gr.Image(label="Context walk: a column per stop, a row per starting noise",
                                             format="png", elem_classes=["pixelated", "label-room"],
                                             elem_id="context-walk")
                        walk_note = gr.Markdown(padding=True, label="Walk note")
                    with gr.Row(equal_height=True):
                        gif = gr.Image(label="Denoising trajectory (GIF)", type="filepath", elem_id="trajectory",
                                       elem_classes=["pixelated", "label-room"])
                        sheet = gr.File(label="Sprite sheet (PNG, native size)")

        with gr.Tab("Forward process"):
            gr.Markdown("Training shows the network sprites with noise added. Pick a sprite and move *t*: "
                        "at t = 0 it is clean, at t = 500 almost pure noise.")
            with gr.Row():
                with gr.Column():
                    first = upscale(events.examples[0], 16) if events.examples is not None else None
                    # height/width: the box keeps its size whatever the upload's (a 1x1 or 64x64 picture too)
                    sprite = gr.Image(first, label="Sprite x₀ (pick below or upload)", type="numpy",
                                      image_mode="RGBA", sources=["upload"], format="png", height=280, width=280,
                                      elem_classes=["pixelated", "fill"], elem_id="forward-sprite")
                    if events.examples is not None:
                        example_gallery = gr.Gallery(
                            [(upscale(s, 4), c) for s, c in zip(events.examples, events.example_captions, strict=True)],
                            label="Dataset sprites (click one)", columns=5, height="auto", allow_preview=False,
                            elem_id="dataset-gallery",
                            format="png", elem_classes="pixelated")
                    else:
                        gr.Markdown("The bundled dataset is not available here: upload a sprite instead.")
                with gr.Column():
                    t_slider = gr.Slider(0, pipe.num_train_steps, value=250, step=1, label="Timestep t")
                    start = events.forward(np.asarray(first), 250) if first is not None else (None, [], "")
                    noisy = gr.Image(start[0], label="Noisy sprite xₜ", format="png", elem_classes="pixelated")
                    formula = gr.Markdown(start[2], label="Formula")
                    strip = gr.Gallery(start[1], label="The same sprite at t = 0, 100, 250, 500", columns=4,
                                       height="auto", allow_preview=False, format="png", elem_classes="pixelated")
            gr.Markdown("### What the network makes of xₜ\nTraining shows the U-Net xₜ, t and the context and asks "
                        "which noise ε was added. Its guess ε̂ implies a clean sprite at once, "
                        "x̂₀ = (xₜ − √(1 − ᾱₜ) ε̂) / √ᾱₜ: sharp at small t, a blur of what is likely at large t, "
                        "which is why sampling takes many small steps.")
            with gr.Row(equal_height=True):
                first_context = events.example_captions[0] if events.examples is not None else UNCONDITIONAL
                told = gr.Dropdown([*names, ("none (unconditional)", UNCONDITIONAL)], value=first_context,
                                   label="Context the network is told", scale=1, min_width=160)
                labels = {"true-noise": "The noise ε that was added", "predicted-noise": "The network's guess ε̂",
                          "predicted-clean": "Its clean sprite x̂₀"}
                # Filled in when the page loads (below): building the page runs no U-Net, which on ZeroGPU may only
                # run inside a request.
                true_noise, guessed_noise, guessed_clean = [
                    gr.Image(label=label, format="png", elem_classes=["pixelated", "fill"], elem_id=name, scale=1,
                             min_width=120, buttons=[])
                    for name, label in labels.items()]
            guess_note = gr.Markdown("Pick a sprite or upload an image.", label="What the network got right")
            guess_curves = gr.Plot(label="The same guess at every t: this sprite, the same ε", elem_id="guess-plot")
            schedule = gr.Plot(events.schedule_plot(250), label="The noise schedule", elem_id="schedule-plot")

        with gr.Tab("Redraw"):
            redraw_tab = build_redraw_tab(events, pipe, gpu)

        with gr.Tab("About"):
            gr.Markdown(about_text(), latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                                 {"left": "$", "right": "$", "display": False}])
            with gr.Accordion("This model's U-Net, stage by stage", open=False):
                gr.Markdown(describe_unet(pipe.unet, len(pipe.guidance_knots)), elem_id="unet-table")
            if STEPS_QUALITY_PLOT.is_file():
                gr.Image(str(STEPS_QUALITY_PLOT), elem_classes=["label-room"], buttons=["fullscreen"],
                         label="Steps versus quality, every sampler (the two-pass teacher, model/teacher)")

        # ---- events -------------------------------------------------------------------------
        # preprocess=False: the sampler events get the raw request values and check them all.
        sample_inputs = [context, weights, steps, sampler, add_noise, noise_scale, guidance, num_images, seed,
                         randomize]
        # On a phone the results sit below every control: a click brings them into view (where they are already in
        # view, it does nothing).
        generate_button.click(None, js=SHOW_RESULTS)
        generate_button.click(gpu(events.generate), sample_inputs, [current, predicted, final, gif, sheet, stats, seed],
                              api_name="generate", preprocess=False, concurrency_id="sampler",
                              concurrency_limit=events.sampling_limit, show_progress_on=[final])
        compare_inputs = [context, weights, compare_steps, noise_scale, guidance, num_images, seed, randomize]
        compare_button.click(lambda: gr.Group(visible=True), None, compare_group, api_visibility="private",
                             queue=False, show_progress="hidden")
        compare_button.click(gpu(events.compare), compare_inputs, [with_noise, without_noise, compare_note, seed],
                             api_name="compare", preprocess=False, concurrency_id="sampler",
                             concurrency_limit=events.sampling_limit,
                             show_progress_on=[with_noise, without_noise])
        samplers_button.click(lambda: gr.Gallery(visible=True, value=None), None, sampler_grids,
                              api_visibility="private", queue=False, show_progress="hidden")
        samplers_button.click(gpu(events.compare_samplers), [context, weights, steps, guidance, num_images, seed,
                                                             randomize, compared], [sampler_grids, seed],
                              api_name="compare_samplers", preprocess=False, concurrency_id="sampler",
                              concurrency_limit=events.sampling_limit, show_progress_on=[sampler_grids])
        walk_button.click(lambda: gr.Group(visible=True), None, walk_group, api_visibility="private", queue=False,
                          show_progress="hidden")
        walk_button.click(gpu(events.walk), [walk_start, walk_end, walk_stops, walk_sprites, steps, sampler, guidance,
                                             seed, randomize], [walk_grid, walk_note, seed],
                          api_name="walk", preprocess=False, concurrency_id="sampler",
                          concurrency_limit=events.sampling_limit, show_progress_on=[walk_grid])
        sampler.change(sampler_hint, sampler, hint, api_visibility="private", queue=False, show_progress="hidden")
        t_slider.change(events.schedule_plot, t_slider, schedule, api_visibility="private", concurrency_limit=4,
                        trigger_mode="always_last", show_progress="hidden")
        # preprocess=False here too: the upload is opened by read_upload, which turns a broken or huge file into
        # one plain message instead of gradio's "could not preprocess" error with a server path in it.
        t_slider.change(events.forward, [sprite, t_slider], [noisy, strip, formula], api_name="forward",
                        concurrency_limit=4, trigger_mode="always_last", show_progress="hidden", preprocess=False)
        # A bad upload: check_upload's one message, then the box is cleared; the box's other handlers stay quiet.
        sprite.upload(events.check_upload, sprite, None, api_visibility="private", show_progress="hidden",
                      preprocess=False).failure(lambda: None, None, sprite, api_visibility="private", queue=False,
                                                show_progress="hidden")
        pick = "Pick a sprite or upload an image."
        sprite.change(quiet_about_uploads(events.forward, (None, [], pick)), [sprite, t_slider],
                      [noisy, strip, formula], api_visibility="private", concurrency_limit=4,
                      trigger_mode="always_last", show_progress="hidden", preprocess=False)
        guess_outputs = [true_noise, guessed_noise, guessed_clean, guess_note]
        t_slider.change(gpu(events.predict), [sprite, t_slider, told], guess_outputs, api_name="predict",
                        concurrency_limit=4, trigger_mode="always_last", show_progress="hidden", preprocess=False)
        for changed in (sprite, told):
            changed.change(quiet_about_uploads(gpu(events.predict), (None, None, None, pick)),
                           [sprite, t_slider, told], guess_outputs, api_visibility="private", concurrency_limit=4,
                           trigger_mode="always_last", show_progress="hidden", preprocess=False)
        demo.load(gpu(events.predict), [sprite, t_slider, told], guess_outputs, api_visibility="private",
                  concurrency_limit=4, show_progress="hidden", preprocess=False)
        for changed in (t_slider, sprite, told):  # the curves are kept per sprite and context: t only moves the marker
            changed.change(quiet_about_uploads(gpu(events.guess_plot), None), [sprite, t_slider, told], guess_curves,
                           api_visibility="private", concurrency_limit=4, trigger_mode="always_last",
                           show_progress="hidden", preprocess=False)
        demo.load(gpu(events.guess_plot), [sprite, t_slider, told], guess_curves, api_visibility="private",
                  concurrency_limit=4, show_progress="hidden", preprocess=False)
        events.offline_api_examples(demo)
        if events.examples is not None:
            example_gallery.select(events.pick_example, None, sprite, api_visibility="private", queue=False)
            example_gallery.select(events.example_context, None, told, api_visibility="private", queue=False)

        demo.load(lambda: (True, True), None, [randomize, redraw_tab.randomize], api_visibility="private",
                  queue=False, show_progress="hidden")  # a visitor gets new sprites at each click
        warm_up_timer.tick(events.warm_up_note, None, [warm_up, warm_up_timer], api_visibility="private",
                           queue=False, show_progress="hidden")

        # Mixing panel: moving a weight selects "mix"; picking one context shows its one-hot vector.
        for slider in sliders:
            slider.input(lambda *w: (_format_weights(w), MIXED), sliders, [weights, context],
                         api_visibility="private", queue=False, show_progress="hidden")
        weights.input(lambda text: _sliders_from_text(text, names), weights, [*sliders, context],
                      api_visibility="private", queue=False, show_progress="hidden")
        context.input(lambda c: _one_hot(c, names), context, [*sliders, weights, mixer], api_visibility="private",
                      queue=False, show_progress="hidden")
    return demo


ABOUT = (Path(__file__).resolve().parent / "docs" / "about.md").read_text()  # the About tab
STEPS_QUALITY_PLOT = Path(__file__).resolve().parent / "docs" / "figures" / "steps_quality.png"  # made by
# python -m studies.steps_quality


def about_text() -> str:
    """The About tab; on a Space (which sets SPACE_ID) it names the Space to duplicate, and how in code."""
    space = os.environ.get("SPACE_ID", "").strip()
    if not space:
        return ABOUT
    return (ABOUT + f"\n\nThis Space is `{space}`. The same copy from Python, pointed at your model: "
            f"`HfApi().duplicate_repo(\"{space}\", to_id=\"you/sprites\", repo_type=\"space\", "
            'space_variables=[{"key": "MODEL_ID", "value": "you/sprite-model"}])`.')


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
        print(f"Could not load MODEL_ID: {err}\nRunning the bundled model instead.", flush=True)
        pipe = load_pipeline(device=device)
        return pipe, f"⚠️ **Could not load MODEL_ID:** {err}. Running the bundled model instead."
    print(f"Loaded MODEL_ID {model_id}" + (f" at revision {revision}" if revision else ""), flush=True)
    return pipe, f"**Model:** `{model_id}`" + (f" at revision `{revision}`" if revision else "") + "."


def launch(demo: gr.Blocks, queue_size: int | None = None, **kwargs):
    """Start the server with a bounded queue; a full queue answers "busy" at once. Every sampling request in
    flight holds a worker thread while it waits for its merged U-Net call, hence the threads."""
    demo.queue(max_size=QUEUE_SIZE if queue_size is None else queue_size, default_concurrency_limit=1)
    return demo.launch(css=CSS, head=HEAD, show_error=True, max_file_size="2mb", max_threads=SAMPLING_IN_FLIGHT + 40,
                       **kwargs)


def __getattr__(name: str):
    """`app.demo`, built on first use, for tools that import this file (gradio's reload mode)."""
    if name == "demo":
        globals()["demo"] = build_demo(*load_model())
        return globals()["demo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    global demo
    # Where the code comes from: a Space runs its own copy, which an installed checkout must not shadow.
    print(f"Sprite Diffusion: app {Path(__file__).resolve()}, model package {Path(model.__file__).resolve().parent}",
          flush=True)
    try:
        pipe, note = load_model()
    except ModelLoadError as err:
        raise SystemExit(f"Sprite Diffusion cannot start: {err}") from None
    pipe.enable_batching()  # requests in flight share each step's U-Net call (model/batching.py)
    pipe.compile_in_background(batch_sizes=BUCKETS)  # serves eager until compiled (docs/performance.md)
    demo = build_demo(pipe, note)
    launch(demo)


if __name__ == "__main__":
    main()
