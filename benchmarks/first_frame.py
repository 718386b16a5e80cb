"""Click-to-first-frame latency in a real browser: how soon the denoising starts to show.

    python -m benchmarks.first_frame [--clicks 10] [--steps 10] [--sampler DDIM] [--guidance_scale 2]

Serves the app on the bundled model on loopback, opens it in Debian's chromium (headless,
through playwright), and per click measures in the page's own clock (performance.now): the
click, the first streamed frame of "Current samples" drawn (its image loaded), and the final
grid drawn. Clicks run one after another, each once the previous run has finished. Prints a
Markdown table with the median and worst of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

import app  # noqa: E402
from benchmarks.common import machine_name  # noqa: E402
from model import load_pipeline  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

# Watches both images; records when a new picture has been decoded (its load event), relative to the
# click, whose time a capturing listener takes when the browser dispatches it.
WATCH = """() => {
  const result = {click: null, first: null, final: null};
  document.addEventListener('click', () => { result.click = performance.now(); }, {capture: true, once: true});
  const seen = new Set([...document.querySelectorAll('#live-samples img, #final-grid img')].map(i => i.src));
  const onImage = img => {
    if (seen.has(img.src)) return;
    seen.add(img.src);
    const done = () => {
      const now = performance.now() - result.click;
      if (img.closest('#live-samples') && result.first === null) result.first = now;
      if (img.closest('#final-grid') && result.final === null) result.final = now;
    };
    img.complete && img.naturalWidth ? done() : img.addEventListener('load', done, {once: true});
  };
  new MutationObserver(() => document.querySelectorAll('#live-samples img, #final-grid img').forEach(onImage))
    .observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  window.__latency = result;
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--steps", type=int, default=app.DEFAULT_STEPS)
    parser.add_argument("--sampler", choices=app.SAMPLER_LABELS, default=app.DEFAULT_SAMPLER)
    parser.add_argument("--guidance_scale", type=float, default=app.DEFAULT_GUIDANCE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from playwright.sync_api import sync_playwright

    pipe = load_pipeline()
    warm_up = pipe.compile_in_background()  # as `python app.py` does; measured once it is done
    if warm_up is not None:
        warm_up.join()
    demo = app.build_demo(pipe, "**Model:** the bundled default.", tempfile.mkdtemp(prefix="first-frame-"))
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    first, final = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            generate = page.get_by_role("button", name="Generate", exact=True)
            generate.wait_for(timeout=120_000)
            page.get_by_label(args.sampler, exact=True).check()
            for label, value in (("Steps", args.steps), ("Guidance scale", args.guidance_scale)):
                box = page.locator(f'input[type=number][aria-label="number input for {label}"]')
                box.fill(str(value))
                box.press("Enter")
            for _ in range(args.clicks + 1):  # the first click warms up the server and the page
                page.evaluate(WATCH)
                generate.click()
                page.wait_for_function("() => window.__latency.final !== null", timeout=300_000)
                page.wait_for_timeout(300)
                latency = page.evaluate("() => window.__latency")
                first.append(latency["first"])
                final.append(latency["final"])
            browser.close()
    finally:
        demo.close()
    first, final = first[1:], final[1:]
    print(f"machine: {machine_name(torch.device('cpu'))}; 16 sprites, {args.sampler} {args.steps} steps, "
          f"guidance {args.guidance_scale:g}, {args.clicks} clicks after one warm-up\n")
    print("| measure | median ms | worst ms |\n| --- | --- | --- |")
    for name, values in (("click to first streamed frame", first), ("click to final sprites", final)):
        print(f"| {name} | {statistics.median(values):.0f} | {max(values):.0f} |")


if __name__ == "__main__":
    main()
