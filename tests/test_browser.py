"""A real browser uses the page: pick a context, generate, switch noise re-adding off, compare, compare
samplers, walk from hero to food, move the forward tab's timestep (the schedule plot's marker, the network's
guess and its curves over t follow), redraw a dataset sprite and repaint a brushed stroke of it.

Runs Debian's chromium through PyPI's playwright (never `playwright install`, which downloads
a browser). Takes the docs' screenshots (into a temporary folder; with SAVE_SCREENSHOTS=1 into
docs/screenshots/, to update them) and checks that the page asked nothing of any host but the local
server. Outside CI it skips when chromium or playwright is missing; in CI (CI=true) that is a failure.
"""

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

import app
from model import DEFAULT_MODEL_DIR, SpritePipeline, build_unet, load_pipeline, make_scheduler

pytestmark = pytest.mark.slow  # starts processes, servers, compiles or a browser: pytest -m 'not slow' skips it

ROOT = Path(__file__).resolve().parents[1]
README_SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def sync_playwright():
    """playwright's entry point, or a skip (a failure in CI) naming what is missing."""
    missing = [] if CHROMIUM.exists() else [f"Debian's chromium ({CHROMIUM}; apt-get install chromium)"]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install playwright==1.65.2)")
        sync_playwright = None
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must provide it (see .ci/run)")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def served(sync_playwright, tmp_path_factory):
    """(address, pipeline) of the app on the bundled model when it exists (real sprites for the screenshots),
    else on a tiny one."""
    if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        pipe, note = load_pipeline(DEFAULT_MODEL_DIR), "**Model:** the bundled default."
    else:
        torch.manual_seed(0)
        names = ["hero", "non-hero", "food", "spell", "item"]
        pipe, note = SpritePipeline(build_unet(len(names), "tiny"), make_scheduler(), names), "**Model:** tiny test."
    demo = app.build_demo(pipe, note, tmp_path_factory.mktemp("files"))
    _, local_url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield local_url, pipe
    demo.close()


@pytest.fixture(scope="module")
def url(served):
    return served[0]


def final_src(page) -> str | None:
    grid = page.locator("#final-grid img")
    return grid.get_attribute("src") if grid.count() else None


def wait_for_new_final(page, old: str | None) -> None:
    page.wait_for_function("""old => {
        const img = document.querySelector('#final-grid img');
        return img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') !== old;
    }""", arg=old, timeout=TIMEOUT_MS)


def wait_for_image(page, selector: str) -> None:
    """Until the element's picture has arrived and loaded (it has none before the first run)."""
    page.wait_for_function("""selector => {
        const img = document.querySelector(selector + ' img');
        return img && img.complete && img.naturalWidth > 0;
    }""", arg=selector, timeout=TIMEOUT_MS)


def image_src(page, selector: str) -> str | None:
    picture = page.locator(f"{selector} img")
    return picture.first.get_attribute("src") if picture.count() else None


def wait_for_new_image(page, selector: str, old: str | None) -> None:
    """Until the element shows a loaded picture other than ``old`` (what it showed before the change)."""
    page.wait_for_function("""([selector, old]) => {
        const img = document.querySelector(selector + ' img');
        return img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') !== old;
    }""", arg=[selector, old], timeout=TIMEOUT_MS)


def set_slider(page, label: str, value: int | float) -> None:
    """Type a value into a slider's number box until the slider itself shows it: the value has reached the page's
    state, which is what a click sends. Typed right after its accordion opened, the box can be re-rendered with the
    old value (CI ran a comparison at 50 steps after 20 was typed), so the typing is repeated until it holds."""
    from playwright.sync_api import expect  # present: the sync_playwright fixture skips (or fails) otherwise
    box, track = page.get_by_label(f"number input for {label}"), page.get_by_label(f"range slider for {label}")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        box.fill(str(value))
        box.press("Tab")
        try:
            expect(track).to_have_value(str(value), timeout=5_000)
            expect(box).to_have_value(str(value), timeout=1_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def untick_randomise_seed(page) -> None:
    """Untick "Randomise seed" once the page's load event has ticked it: unticked earlier, the load's tick can
    land after it on a slow machine, and the run then takes a random seed (seen in CI)."""
    from playwright.sync_api import expect  # present: the sync_playwright fixture skips (or fails) otherwise
    box = page.get_by_label("Randomise seed").first
    expect(box).to_be_checked(timeout=TIMEOUT_MS)
    box.uncheck()


# Every visible input's label and value (boxes ticked or not, radios only when picked), first in a failure message:
# CI keeps only the log, and shortens long ones in the middle.
FORM_STATE_JS = """() => Array.from(document.querySelectorAll('input, textarea'))
    .filter(e => e.offsetParent !== null && !(e.type === 'radio' && !e.checked))
    .map(e => {
        const label = (e.getAttribute('aria-label') || e.labels?.[0]?.innerText || e.type).trim();
        if (e.type === 'radio') return `picked: ${label}`;
        return `${label} = ${e.type === 'checkbox' ? e.checked : JSON.stringify(e.value)}`;
    })
    .join('\\n')"""


@contextmanager
def evidence_on_failure(page, folder: Path) -> Iterator[None]:
    """A failing step leaves evidence: a screenshot, the end of the page's text and the browser console's
    errors and warnings, in the failure message (CI keeps only the log)."""
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: console.append(f"page error: {error}"))
    try:
        yield
    except Exception as err:
        shot = folder / "failure.png"
        try:
            page.screenshot(path=shot, full_page=True)
            controls = page.evaluate(FORM_STATE_JS)
            text = page.locator("body").inner_text(timeout=5_000)[-1500:]
        except Exception as second:  # the page itself may be gone
            controls, text = "", f"(page unreadable: {second})"
        raise AssertionError(f"{err}\n--- screenshot: {shot}\n--- the visible controls ---\n{controls}\n"
                             f"--- the page's text, its end ---\n{text}\n"
                             f"--- console ---\n" + "\n".join(console[-30:])) from err


def test_page_generates_sprites_without_outside_requests(sync_playwright, url, tmp_path):
    # a test run leaves the tracked screenshots alone (their timings text differs every run)
    screenshots = README_SCREENSHOTS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            with evidence_on_failure(page, tmp_path):
                page.on("request", lambda request: requested.append(request.url))
                page.goto(url)
                generate = page.get_by_role("button", name="Generate", exact=True)
                generate.wait_for(timeout=TIMEOUT_MS)

                page.get_by_label("hero", exact=True).check()
                untick_randomise_seed(page)
                page.get_by_label("Seed", exact=True).fill("3")
                generate.click()
                wait_for_new_final(page, None)
                assert "steps/s" in page.locator("body").inner_text()
                page.screenshot(path=screenshots / "generate.png", full_page=True)

                page.get_by_label("DDPM", exact=True).check()  # the collapse needs DDPM: DDIM re-adds no noise
                page.get_by_label("Re-add noise (s3·z)").uncheck()
                with_noise = final_src(page)
                generate.click()
                wait_for_new_final(page, with_noise)
                page.screenshot(path=screenshots / "noise-off.png", full_page=True)

                page.get_by_text("Compare: noise re-adding on vs off").first.click()  # the accordion
                set_slider(page, "DDPM steps", 20)  # quicker than its default in a test
                page.get_by_role("button", name="Compare: noise re-adding on vs off", exact=True).click()
                page.get_by_text("Same seed (3), same 20 DDPM steps").wait_for(timeout=TIMEOUT_MS)
                page.screenshot(path=screenshots / "compare.png", full_page=True)

                page.get_by_text("Compare samplers").first.click()  # the accordion
                page.get_by_role("button", name="Compare samplers", exact=True).click()
                comparison = page.locator("#sampler-comparison")
                comparison.get_by_text("Euler ancestral:").wait_for(timeout=TIMEOUT_MS)
                captions = comparison.inner_text()
                for label in app.COMPARED_SAMPLERS:  # each with its time
                    assert re.search(re.escape(label) + rf": {app.DEFAULT_STEPS} steps, [0-9.]+ s", captions), captions
                for item in comparison.locator(".thumbnail-item").all():  # each caption under its grid, not over it
                    picture, caption = item.locator("img").bounding_box(), item.locator(".caption-label").bounding_box()
                    assert caption["y"] >= picture["y"] + picture["height"] - 1, (picture, caption)
                page.screenshot(path=screenshots / "compare-samplers.png", full_page=True)

                page.get_by_role("radio", name=app.DEFAULT_SAMPLER, exact=True).check()  # back to the default sampler
                page.get_by_text("Walk from one context to another").first.click()  # the accordion: hero to food
                page.get_by_role("button", name="Walk", exact=True).click()
                page.get_by_text("[0, 0, 1, 0, 0]").wait_for(timeout=TIMEOUT_MS)  # the last stop's weights: all done
                wait_for_image(page, "#context-walk")
                page.locator("#walk-group").first.screenshot(path=screenshots / "walk.png")  # the walk and its caption

                page.get_by_role("tab", name="Forward process").click()
                page.get_by_text("The same sprite at t = 0, 100, 250, 500").wait_for()
                plot = page.locator("#schedule-plot img")
                plot.wait_for(timeout=TIMEOUT_MS)
                at_250 = plot.get_attribute("src")
                wait_for_image(page, "#guess-plot")  # the page's first guess, at t = 250
                curves_at_250 = image_src(page, "#guess-plot")
                box = page.get_by_label("number input for Timestep t")
                box.fill("400")
                box.press("Enter")  # the marker follows the slider: the plot is redrawn at t = 400
                page.wait_for_function("""old => {
                    const img = document.querySelector('#schedule-plot img');
                    return img && img.getAttribute('src') !== old;
                }""", arg=at_250, timeout=TIMEOUT_MS)
                # the network's guess follows
                page.get_by_text("One U-Net call at t = 400").wait_for(timeout=TIMEOUT_MS)
                wait_for_image(page, "#predicted-clean")
                wait_for_new_image(page, "#guess-plot", curves_at_250)  # the same guess at every t, marked at 400
                page.screenshot(path=screenshots / "forward.png", full_page=True)

                page.get_by_role("tab", name="Redraw").click()
                upload = tmp_path / "my-sprite.png"  # a sprite of one's own, uploaded, at 4x its size
                sprite = np.zeros((16, 16, 3), np.uint8) + 255
                sprite[3:13, 5:11] = (200, 40, 40)  # a red figure with a dark head on white
                sprite[1:4, 6:10] = (40, 30, 30)
                Image.fromarray(sprite).resize((64, 64), Image.NEAREST).save(upload)
                page.locator("#redraw-sprite input[type=file]").set_input_files(str(upload))
                wait_for_image(page, "#redraw-start")  # the forward-noised starting point of the upload
                box = page.get_by_label("number input for Strength")
                box.fill("0.6")
                box.press("Enter")
                page.get_by_text("round(0.6 × 500) = 300").wait_for(timeout=TIMEOUT_MS)  # the starting point follows
                page.get_by_role("button", name="Redraw", exact=True).click()
                wait_for_image(page, "#redraw-grid")
                assert "variations at strength 0.6" in page.locator("body").inner_text()
                page.screenshot(path=screenshots / "redraw.png", full_page=True)

                editor = page.locator("#repaint-mask")
                editor.get_by_role("button", name="Brush").first.click()
                canvas = editor.locator("canvas").first.bounding_box()
                x, y = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] * 0.3
                page.mouse.move(x - 40, y)  # a short stroke across the upper part of the sprite
                page.mouse.down()
                page.mouse.move(x + 40, y, steps=8)
                page.mouse.up()
                page.get_by_role("button", name="Repaint the masked pixels").click()
                wait_for_image(page, "#repaint-grid")
                assert re.search(r"8 repaints of \d+ pixels", page.locator("body").inner_text())
                page.screenshot(path=screenshots / "repaint.png", full_page=True)

                page.get_by_role("tab", name="About").click()
                page.get_by_text("What the \"re-add noise\" toggle shows").wait_for()
                page.get_by_text("This model's U-Net, stage by stage").click()  # the accordion: the loaded model's
                page.locator("#unet-table").get_by_text("context embedding").wait_for(timeout=TIMEOUT_MS)
                page.screenshot(path=screenshots / "about.png", full_page=True)
        finally:
            browser.close()

    outside = sorted({u for u in requested if urlparse(u).scheme not in ("data", "blob")
                      and urlparse(u).hostname not in LOCAL_HOSTS})
    assert requested and not outside, f"the page requested outside hosts: {outside}"
    for name in ("generate", "noise-off", "compare", "compare-samplers", "forward", "redraw", "repaint", "about"):
        assert (screenshots / f"{name}.png").stat().st_size > 10_000


def test_the_first_minutes_at_1280x800(sync_playwright, served, tmp_path, capfd):
    """A visitor on a laptop screen right after a start: the warm-up line shows while the U-Net "compiles" (the
    flag the background compile sets; tests/test_fast.py covers the compile itself), a request made meanwhile
    runs, Generate and both live grids are in view while it does and the results after it, a slider typed out of
    range says what it took, hostile uploads get one plain message each, and where compiling failed the page says
    the runs are uncompiled (tests/test_space.py starts the app without a C compiler)."""
    from playwright.sync_api import expect  # present: the sync_playwright fixture skips (or fails) otherwise

    url, pipe = served
    screenshots = README_SCREENSHOTS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    huge = tmp_path / "huge.png"
    Image.new("P", (3000, 3000)).save(huge, optimize=True)  # 33 KB of file, 9 megapixels of picture
    fake = tmp_path / "notes.png"
    fake.write_text("a text file with a picture's name")
    capfd.readouterr()
    pipe.compiling = True
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                with evidence_on_failure(page, tmp_path):
                    page.goto(url)
                    page.locator("#warm-up").get_by_text("Warming up").wait_for(timeout=TIMEOUT_MS)
                    # the page ticks "Randomise seed" on load (the API's default stays False)
                    expect(page.get_by_label("Randomise seed").first).to_be_checked(timeout=TIMEOUT_MS)
                    page.get_by_role("button", name="Generate", exact=True).click()
                    wait_for_image(page, "#live-samples")  # sampling has started, and runs during the warm-up
                    for selector in ("#run-buttons button >> nth=0", "#live-samples img", "#live-predicted img"):
                        box = page.locator(selector).bounding_box()
                        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 800, (selector, box)
                        assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, (selector, box)
                    page.screenshot(path=screenshots / "laptop-warm-up.png")
                    pipe.compiling = False
                    page.locator("#warm-up").get_by_text("Warming up").wait_for(state="hidden", timeout=TIMEOUT_MS)
                    wait_for_new_final(page, None)
                    # The results fit the screen, and the run buttons sit below the controls, covering none of them.
                    for selector in ("#final-grid img", "#trajectory img", "#run-buttons button >> nth=0"):
                        box = page.locator(selector).bounding_box()
                        assert box and 0 <= box["y"] and box["y"] + box["height"] <= 800, (selector, box)
                    controls, buttons = (page.locator(s).bounding_box() for s in ("#control-list", "#run-buttons"))
                    assert buttons["y"] >= controls["y"] + controls["height"] - 1, (controls, buttons)

                    # A slider's box typed out of range: gradio brings it back into range, and the page says so.
                    steps = page.get_by_label("number input for Steps")
                    for typed, shown, note in (("501", "500", "Steps takes 1 to 500: 501 became 500."),
                                               ("0", "1", "Steps takes 1 to 500: 0 became 1.")):
                        steps.fill(typed)
                        steps.press("Tab")
                        expect(page.get_by_label("range slider for Steps")).to_have_value(shown, timeout=TIMEOUT_MS)
                        page.get_by_role("status").get_by_text(note).wait_for(timeout=TIMEOUT_MS)
                    set_slider(page, "Steps", app.DEFAULT_STEPS)
                    expect(page.get_by_role("status").filter(has_text="Steps takes")).to_have_count(0)

                    page.get_by_role("tab", name="Forward process").click()
                    upload = page.locator("#forward-sprite input[type=file]")
                    clear = page.locator("#forward-sprite").get_by_role("button", name=re.compile("clear|remove", re.I))
                    clear.click()  # the dataset sprite the tab starts with
                    page.locator("#forward-sprite img").wait_for(state="detached", timeout=TIMEOUT_MS)
                    for path, message, name in ((fake, "sprite: not an image", "upload-not-an-image"),
                                                (huge, "sprite: image too large", "upload-too-large")):
                        upload.set_input_files(str(path))
                        # One message, and the box and the pictures that followed the old sprite are cleared.
                        page.get_by_text(message).first.wait_for(timeout=TIMEOUT_MS)
                        page.get_by_text("Pick a sprite or upload an image.").first.wait_for(timeout=TIMEOUT_MS)
                        expect(page.locator("#predicted-clean img")).to_have_count(0, timeout=TIMEOUT_MS)
                        expect(page.locator("#forward-sprite img")).to_have_count(0, timeout=TIMEOUT_MS)
                        expect(page.get_by_text(message)).to_have_count(1)
                        page.screenshot(path=screenshots / f"{name}.png")
                        assert str(tmp_path) not in page.locator("body").inner_text()
                        for close in page.get_by_label("Close").all():  # the toast
                            close.click()

                    # Where torch.compile cannot work (no C compiler), the page says every run is uncompiled.
                    pipe.compile_error = "InvalidCxxCompiler: No working C++ compiler found"
                    page.reload()
                    page.locator("#warm-up").get_by_text("Running uncompiled").wait_for(timeout=TIMEOUT_MS)
                    old = final_src(page)
                    page.get_by_role("button", name="Generate", exact=True).click()
                    wait_for_new_final(page, old)
                    assert "eager (uncompiled): torch.compile is unavailable" in page.locator("body").inner_text()
            finally:
                browser.close()
    finally:
        pipe.compiling, pipe.compile_error = False, None
    assert "Traceback" not in capfd.readouterr().err  # a visitor's bad upload is not a server fault


def test_number_boxes_send_what_they_show(sync_playwright, url, tmp_path):
    """An emptied Steps, Guidance or Seed box is an error naming the box (gradio's slider put its minimum back,
    so a cleared Steps ran 1 step), and a seed typed as 1e9 is shown, run and reported as 1000000000."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            with evidence_on_failure(page, tmp_path):
                page.goto(url)
                generate = page.get_by_role("button", name="Generate", exact=True)
                generate.wait_for(timeout=TIMEOUT_MS)
                untick_randomise_seed(page)
                seed = page.get_by_label("Seed", exact=True)
                boxes = ((page.get_by_label("number input for Steps"), "Steps (num_inference_steps)"),
                         (page.get_by_label("number input for Guidance scale"), "Guidance scale (guidance_scale)"),
                         (seed, "Seed (seed)"))
                for box, words in boxes:
                    before = box.input_value()
                    box.fill("")
                    generate.click()  # the click takes the focus: the box's blur comes first
                    page.get_by_text(f"{words} must be").first.wait_for(timeout=TIMEOUT_MS)
                    assert "got nothing (an empty box)" in page.locator("body").inner_text()
                    assert box.input_value() == ""  # still empty, not the slider's minimum
                    box.fill(before)
                    box.press("Tab")
                    for close in page.get_by_label("Close").all():  # the error toasts
                        close.click()
                seed.fill("1e9")
                seed.press("Tab")
                assert seed.input_value() == "1000000000"
                old = final_src(page)
                generate.click()
                wait_for_new_final(page, old)
                assert "seed 1000000000" in page.locator("body").inner_text()
                assert seed.input_value() == "1000000000"
        finally:
            browser.close()


def test_a_phone_shows_every_tab_and_the_results_and_clips_nothing(sync_playwright, url, tmp_path):
    """390x844, a phone's screen: the tabs by name (not behind gradio's unlabelled overflow menu), the results in
    view after a tap on Generate (they sit below all the controls), galleries and the formula within the screen,
    and the U-Net table's words whole."""
    from playwright.sync_api import expect  # present: the sync_playwright fixture skips (or fails) otherwise

    screenshots = README_SCREENSHOTS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            with evidence_on_failure(page, tmp_path):
                page.goto(url)
                generate = page.get_by_role("button", name="Generate", exact=True)
                generate.wait_for(timeout=TIMEOUT_MS)
                for name in ("Generate", "Forward process", "Redraw", "About"):
                    expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible(timeout=TIMEOUT_MS)
                expect(page.get_by_label("More tabs")).to_be_hidden()
                generate.tap()
                wait_for_image(page, "#live-samples")
                page.wait_for_function("""() => {  // scrolled into view: the whole live grid on the screen
                    const img = document.querySelector('#live-samples img');
                    const box = img && img.getBoundingClientRect();
                    return box && box.height > 100 && box.top >= 0 && box.bottom <= window.innerHeight;
                }""", timeout=TIMEOUT_MS)
                wait_for_new_final(page, None)
                page.screenshot(path=screenshots / "phone-generate.png")

                page.get_by_role("tab", name="Forward process").tap()
                page.get_by_text("The same sprite at t = 0, 100, 250, 500").wait_for(timeout=TIMEOUT_MS)
                page.locator(".katex-display").first.wait_for(timeout=TIMEOUT_MS)
                wait_for_image(page, "#guess-plot")
                overflowing = page.evaluate("""() => [...document.querySelectorAll(
                        '.katex-display, #dataset-gallery .thumbnail-item, .gallery .thumbnail-item')]
                    .filter(e => e.offsetParent !== null)
                    .filter(e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > innerWidth)
                    .map(e => e.className + ': ' + e.textContent.slice(0, 40))""")
                assert overflowing == [], overflowing
                page.screenshot(path=screenshots / "phone-forward.png", full_page=True)

                page.get_by_role("tab", name="About").tap()
                page.get_by_text("This model's U-Net, stage by stage").tap()
                page.locator("#unet-table").get_by_text("context embedding").first.wait_for(timeout=TIMEOUT_MS)
                broken = page.evaluate("""() => [...document.querySelectorAll('#unet-table th, #unet-table td')]
                    .filter(cell => {  // a word over two lines: its text has more line boxes than lines of text
                        const range = document.createRange();
                        range.selectNodeContents(cell);
                        const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                        return lines.size > cell.innerText.split('\\n').length;
                    }).map(cell => cell.innerText)""")
                assert broken == [], broken
        finally:
            browser.close()
