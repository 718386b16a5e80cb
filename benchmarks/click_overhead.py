"""Where a click's time goes besides the U-Net: the page's default request timed at four depths, in one process.

    python -m benchmarks.click_overhead                 # eager U-Net, 5 clicks per depth
    python -m benchmarks.click_overhead --compile       # the U-Net compiled first, as the app serves it

1. the pipeline alone (`pipe(...)`: sampling, the U-Net and the update);
2. the page's event function (ui/events.py: generate) run to its end without gradio: adds the live grids,
   the GIF and the sprite sheet;
3. the launched app through gradio_client, without downloading files: adds gradio's queue, the streamed
   updates (each with its pictures encoded into gradio's cache) and the server-sent events;
4. the same, downloading every file the stream names, as a page fetches its pictures.

Each depth gets one warm-up click, then the median of --clicks. Prints a Markdown table with each depth's
median and what it adds to the one before. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402

import app  # noqa: E402
from benchmarks.common import machine_name  # noqa: E402
from model import SAMPLERS, load_pipeline  # noqa: E402
from model.batching import BUCKETS  # noqa: E402
from ui.events import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, SpriteApp  # noqa: E402


def median_seconds(click: Callable[[], object], clicks: int) -> float:
    click()  # warm-up
    times = []
    for _ in range(clicks):
        start = time.perf_counter()
        click()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder or Hub repo (default: the bundled model)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="compile the U-Net first, as the app does")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.model) if args.model else load_pipeline()
    pipe.enable_batching()  # as app.main serves
    if args.compile:
        pipe.enable_fast_sampling(batch_sizes=BUCKETS)
    request = dict(context=pipe.context_names[0], weights="", num_inference_steps=DEFAULT_STEPS,
                   sampler=DEFAULT_SAMPLER, add_noise=True, noise_scale=1.0, guidance_scale=DEFAULT_GUIDANCE,
                   num_images=16, seed=1, randomize_seed=False)
    sampler = next(s.name for s in SAMPLERS.values() if s.label == DEFAULT_SAMPLER)
    depths = {"the pipeline alone": lambda: pipe(request["context"], num_images=16, num_inference_steps=DEFAULT_STEPS,
                                                  sampler=sampler, guidance_scale=DEFAULT_GUIDANCE, seed=1)}
    events = SpriteApp(pipe, tempfile.mkdtemp(prefix="click-overhead-"))
    depths["the event function, no gradio"] = lambda: list(events.generate(**request))
    demo = app.build_demo(pipe, "click overhead")
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        quiet = dict(analytics_enabled=False, verbose=False)
        bare = Client(url, download_files=False, **quiet)
        fetching = Client(url, download_files=tempfile.mkdtemp(prefix="click-downloads-"), **quiet)
        depths["the app through gradio_client"] = lambda: bare.predict(**request, api_name="/generate")
        depths["the same, downloading its files"] = lambda: fetching.predict(**request, api_name="/generate")
        seconds = {name: median_seconds(click, args.clicks) for name, click in depths.items()}
    finally:
        demo.close()
    print(f"Machine: {machine_name(torch.device('cpu'))}. U-Net "
          f"{'compiled' if args.compile else 'eager'}. 16 sprites, {DEFAULT_STEPS} {DEFAULT_SAMPLER} steps, guidance "
          f"{DEFAULT_GUIDANCE:g}; median of {args.clicks} clicks after one warm-up.\n")
    print("| depth | seconds | adds |\n| --- | --- | --- |")
    before = None
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {'' if before is None else f'{value - before:+.2f}'} |")
        before = value


if __name__ == "__main__":
    main()
