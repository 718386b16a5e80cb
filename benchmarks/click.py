"""A default click end to end, against the pipeline's own time for the same request, in one run.

    python -m benchmarks.click [--clicks 10] [--model runs/distill-g3]

Serves the app as `python app.py` does (batching on, the U-Net compiled for the batcher's row counts and raced
against OpenVINO where it is installed) on
loopback and times the page's default request (16 sprites, DPM-Solver++ 2M SDE 10, guidance 2) three ways, in
rounds (one of each per round, so the machine's drift hits all three alike), after one warm-up round:

1. the pipeline alone (``pipe(...)``): sampling, nothing else;
2. the app through gradio_client: from submit to the update that carries the final sprites;
3. the page in Debian's chromium (headless, through playwright, on the same cores as the server): from the click
   to the first streamed frame, and to the final grid drawn (its image's load event), in the page's own clock.

Prints a Markdown table: each median, its worst, and its ratio to the pipeline's median. Run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402

import app  # noqa: E402
from benchmarks.common import machine_name  # noqa: E402
from model import SAMPLERS, load_pipeline  # noqa: E402
from model.batching import BUCKETS  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

# Records when a new picture of each image has been decoded (its load event), relative to the click, whose
# time a capturing listener takes when the browser dispatches it; the GIF comes last.
WATCH = """() => {
  const IMAGES = '#live-samples img, #final-grid img, #trajectory img';
  const result = {click: null, first: null, final: null, gif: null};
  document.addEventListener('click', () => { result.click = performance.now(); }, {capture: true, once: true});
  const seen = new Set([...document.querySelectorAll(IMAGES)].map(i => i.src));
  const onImage = img => {
    if (seen.has(img.src)) return;
    seen.add(img.src);
    const done = () => {
      const now = performance.now() - result.click;
      if (img.closest('#live-samples') && result.first === null) result.first = now;
      if (img.closest('#final-grid') && result.final === null) result.final = now;
      if (img.closest('#trajectory') && result.gif === null) result.gif = now;
    };
    img.complete && img.naturalWidth ? done() : img.addEventListener('load', done, {once: true});
  };
  new MutationObserver(() => document.querySelectorAll(IMAGES).forEach(onImage))
    .observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  window.__latency = result;
}"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--model", default=None, help="model folder or Hub repo (default: the bundled model)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    pipe = load_pipeline(args.model)
    pipe.enable_batching()  # as app.main serves
    pipe.enable_fast_sampling(batch_sizes=BUCKETS, engine="auto")  # OpenVINO too where installed, as app.py races
    request = dict(context=pipe.context_names[0], weights="", num_inference_steps=app.DEFAULT_STEPS,
                   sampler=app.DEFAULT_SAMPLER, add_noise=True, noise_scale=1.0, guidance_scale=app.DEFAULT_GUIDANCE,
                   num_images=16, seed=0, randomize_seed=False)
    sampler = next(s.name for s in SAMPLERS.values() if s.label == app.DEFAULT_SAMPLER)
    demo = app.build_demo(pipe, f"**Model:** {args.model or 'the bundled default'}.", tempfile.mkdtemp(prefix="click-"))
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    client = Client(url, download_files=False, analytics_enabled=False, verbose=False)

    def pipeline() -> float:
        start = time.perf_counter()
        pipe(request["context"], num_images=16, num_inference_steps=app.DEFAULT_STEPS, sampler=sampler,
             guidance_scale=app.DEFAULT_GUIDANCE, seed=0)
        return time.perf_counter() - start

    def through_client() -> float:
        start = time.perf_counter()
        job = client.submit(**request, api_name="/generate")
        arrived = next(time.perf_counter() for update in job if update[2] is not None)
        job.result()  # the GIF and the sheet follow; the next round starts after them
        return arrived - start

    times: dict[str, list[float]] = {name: [] for name in ("pipeline", "client", "first", "final")}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            generate = page.get_by_role("button", name="Generate", exact=True)
            generate.wait_for(timeout=120_000)
            for _ in range(args.clicks + 1):  # the first round warms up the server and the page
                times["pipeline"].append(pipeline())
                times["client"].append(through_client())
                page.evaluate(WATCH)
                generate.click()
                page.wait_for_function("() => window.__latency.gif !== null", timeout=300_000)  # the run's end
                latency = page.evaluate("() => window.__latency")
                times["first"].append(latency["first"] / 1000)
                times["final"].append(latency["final"] / 1000)
            browser.close()
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # gradio's "Closing server" note, off the table
            demo.close()
    base = statistics.median(times["pipeline"][1:])
    print(f"Machine: {machine_name(torch.device('cpu'))}. Model: {args.model or 'model/default'}.\n"
          f"16 sprites, {app.DEFAULT_STEPS} {app.DEFAULT_SAMPLER} steps, "
          f"guidance {app.DEFAULT_GUIDANCE:g}; U-Net: {pipe.engine}; {args.clicks} rounds after one warm-up.\n")
    print("| measure | median s | worst s | x the pipeline |\n| --- | --- | --- | --- |")
    for name, label in (("pipeline", "the pipeline alone"), ("client", "gradio_client: submit to final sprites"),
                        ("first", "browser: click to first streamed frame"),
                        ("final", "browser: click to final sprites")):
        values = times[name][1:]
        print(f"| {label} | {statistics.median(values):.2f} | {max(values):.2f} | "
              f"{statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
