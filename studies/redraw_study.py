"""How far does a redraw (SDEdit, ``pipe.redraw``) move a sprite? The measurements and the strip of issue 19.

    python -m studies.redraw_study                              # the bundled model: about 17 min on one busy thread
    python -m studies.redraw_study --num_sprites 5 --steps 5    # a quick try

Three parts, all on sprites from the judge's held-out split (it never saw them), DDIM 50 steps, guidance 2:

1. faithfulness: sprites of every context redrawn under their own context at several strengths; the mean RMS
   pixel distance (uint8 RGB, 0-255) to the input, and the share the judge still calls their own context;
2. context transfer: hero sprites redrawn as food; the share the judge calls food (strength 0: the heroes as
   they are);
3. strips: one hero redrawn as food at strengths 0-1 (a few variations each), and repainted (RePaint) with its
   lower half masked, with and without resampling jumps.

Writes redraw_study.json (every figure, the settings, the machine), redraw_study.md (the tables, also printed),
redraw_strip.png and repaint_strip.png to --out_dir. Sprite k of a part is redrawn with seed ``--seed + k`` at
every strength, so the strengths differ only in how far the same noise takes the sprite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from model import SAMPLERS, load_pipeline, make_grid, timestep_grid, upscale
from model.editing import EditPlan
from training.evaluate import Evaluator, default_judge_dir, machine_info
from training.judge import judge_outputs

COURSE_SAMPLERS = [name for name, s in SAMPLERS.items() if s.is_course_formula]  # their steps follow the grid
STRIP_SCALE = 8  # nearest-neighbour enlargement of the strips
HEADER_PX = 24  # the band above a strip for the column labels
ROW_LABEL_PX = 120  # the band left of the repaint strip for the row labels
GAP_GREY = (128, 128, 128)
JUMPS = (5, 3)  # RePaint's jump_length, jump_n_sample in the repaint strip's second row


@dataclass
class Settings:
    """What the study runs; the defaults are issue 19's."""

    num_sprites: int = 50  # per part; faithfulness takes num_sprites // contexts from each context
    steps: int = 50
    sampler: str = "ddim"
    guidance_scale: float = 2.0
    seed: int = 0
    source: str = "hero"  # context transfer: sprites of this context ...
    target: str = "food"  # ... redrawn as this one
    faithful_strengths: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.7, 0.9])
    transfer_strengths: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])
    strip_strengths: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    strip_variations: int = 4


# ---- choosing the sprites ------------------------------------------------------------------
def choose_sprites(evaluator: Any, settings: Settings) -> tuple[np.ndarray, np.ndarray, int]:
    """(faithfulness indices, transfer indices, how many transfer sprites came from the judge's training split).

    evaluator: a training.evaluate.Evaluator or anything with ``labels``, ``names`` and ``heldout_idx``.
    Seeded draws from the held-out split; the transfer sprites are topped up from the rest of the source
    context only where the held-out split holds too few.
    """
    rng = np.random.default_rng(settings.seed)
    labels, heldout = evaluator.labels, evaluator.heldout_idx
    per_context = max(1, settings.num_sprites // len(evaluator.names))
    faithful = []
    for c in range(len(evaluator.names)):
        pool = heldout[labels[heldout] == c]
        faithful.append(rng.choice(pool, min(per_context, len(pool)), replace=False))
    source = evaluator.names.index(settings.source)
    pool = heldout[labels[heldout] == source]
    transfer = rng.choice(pool, min(settings.num_sprites, len(pool)), replace=False)
    missing = settings.num_sprites - len(transfer)
    if missing > 0:
        rest = np.setdiff1d(np.flatnonzero(labels == source), heldout)
        transfer = np.concatenate([transfer, rng.choice(rest, min(missing, len(rest)), replace=False)])
    return np.concatenate(faithful), transfer, max(0, len(transfer) - len(pool))


# ---- redrawing and measuring -------------------------------------------------------------------
def steps_run(pipe: Any, settings: Settings, strength: float) -> int:
    """The grid steps a redraw at this strength runs: those with t <= t0 = round(strength * T)."""
    t0 = round(strength * pipe.num_train_steps)
    return sum(t <= t0 for t, _ in timestep_grid(settings.steps, pipe.num_train_steps))


def rms_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sprite RMS difference of uint8 RGB values (0-255) between (N, R, R, 3) stacks."""
    return np.sqrt(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))


def redraw_each(pipe: Any, sprites: np.ndarray, contexts: Sequence[str], strengths: Sequence[float],
                settings: Settings, desc: str) -> Iterator[tuple[float, np.ndarray]]:
    """(strength, one variation of every sprite as (N, R, R, 3) uint8) per strength, under one progress bar.
    Sprite k gets seed settings.seed + k at every strength."""
    total = len(sprites) * sum(steps_run(pipe, settings, s) for s in strengths)
    with tqdm(total=total, unit="step", desc=desc, file=sys.stderr) as bar:
        for strength in strengths:
            yield strength, np.stack([
                pipe.redraw(sprite, context, strength, num_images=1, num_inference_steps=settings.steps,
                            sampler=settings.sampler, guidance_scale=settings.guidance_scale, seed=settings.seed + k,
                            callback=lambda *_: bar.update()).array[0]
                for k, (sprite, context) in enumerate(zip(sprites, contexts, strict=True))])


def faithfulness(pipe: Any, evaluator: Any, idx: np.ndarray, settings: Settings) -> list[dict[str, Any]]:
    """Each sprite redrawn under its own context: the mean distance to the input, per strength."""
    sprites, labels = evaluator.real[idx], evaluator.labels[idx]
    rows = []
    for strength, redrawn in redraw_each(pipe, sprites, [evaluator.names[c] for c in labels],
                                         settings.faithful_strengths, settings, f"faithfulness, {len(idx)} sprites"):
        distance = rms_distance(redrawn, sprites)
        verdict = judge_outputs(evaluator.judge, redrawn)[0]
        rows.append({"strength": strength, "t0": round(strength * pipe.num_train_steps),
                     "steps_run": steps_run(pipe, settings, strength), "mean_distance": float(distance.mean()),
                     "median_distance": float(np.median(distance)),
                     "judged_own_context": float((verdict == labels).mean())})
    return rows


def transfer(pipe: Any, evaluator: Any, idx: np.ndarray, settings: Settings) -> list[dict[str, Any]]:
    """Source sprites redrawn as the target context: the judge's verdicts per strength (0: the sprites as they are)."""
    sprites = evaluator.real[idx]
    source, target = evaluator.names.index(settings.source), evaluator.names.index(settings.target)
    redrawn = redraw_each(pipe, sprites, [settings.target] * len(idx), settings.transfer_strengths, settings,
                          f"{settings.source} as {settings.target}, {len(idx)} sprites")
    rows = []
    for strength, moved in itertools.chain([(0.0, sprites)], redrawn):
        verdict = judge_outputs(evaluator.judge, moved)[0]
        rows.append({"strength": strength, "t0": round(strength * pipe.num_train_steps),
                     "steps_run": steps_run(pipe, settings, strength),
                     "judged_target": float((verdict == target).mean()),
                     "judged_source": float((verdict == source).mean()),
                     "mean_distance": float(rms_distance(moved, sprites).mean())})
    return rows


# ---- the strips -------------------------------------------------------------------------------
def labelled_sheet(cells: np.ndarray, column_labels: Sequence[str], row_labels: Sequence[str] | None = None,
                   scale: int = STRIP_SCALE) -> Image.Image:
    """(rows, cols, R, R, 3) uint8 -> one image: cells enlarged ``scale`` x with grey gaps, labels above
    (and left, if given). Size: ((cols (R + 1) + 1) scale [+ ROW_LABEL_PX], HEADER_PX + (rows (R + 1) + 1) scale)."""
    rows, cols = cells.shape[:2]
    grid = upscale(make_grid(cells.reshape(rows * cols, *cells.shape[2:]), ncols=cols, background=GAP_GREY), scale)
    left = ROW_LABEL_PX if row_labels else 0
    sheet = Image.new("RGB", (grid.width + left, grid.height + HEADER_PX), (255, 255, 255))
    sheet.paste(grid, (left, HEADER_PX))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=14)
    cell = (cells.shape[3] + 1) * scale
    for c, text in enumerate(column_labels):
        draw.text((left + scale + c * cell + (cell - scale) / 2, HEADER_PX / 2), text, fill=(0, 0, 0), font=font,
                  anchor="mm")
    for r, text in enumerate(row_labels or []):
        draw.text((6, HEADER_PX + scale + r * cell + (cell - scale) / 2), text, fill=(0, 0, 0), font=font,
                  anchor="lm")
    return sheet


def redraw_strip(pipe: Any, sprite: np.ndarray, settings: Settings) -> Image.Image:
    """The sprite redrawn as the target at each strip strength (columns), strip_variations variations (rows)."""
    columns = []
    total = sum(steps_run(pipe, settings, s) for s in settings.strip_strengths)
    with tqdm(total=total, unit="step", desc="redraw strip", file=sys.stderr) as bar:
        for strength in settings.strip_strengths:
            columns.append(pipe.redraw(sprite, settings.target, strength, settings.strip_variations,
                                       settings.steps, settings.sampler, guidance_scale=settings.guidance_scale,
                                       seed=settings.seed, callback=lambda *_: bar.update()).array)
    return labelled_sheet(np.stack(columns, axis=1), [f"strength {s:g}" for s in settings.strip_strengths])


def repaint_strip(pipe: Any, sprite: np.ndarray, settings: Settings) -> Image.Image:
    """The sprite's lower half repainted under the source context (RePaint): input, mask, then the variations;
    first row without jumps, second with JUMPS (the jump no longer than the steps)."""
    mask = np.zeros(sprite.shape[:2], dtype=bool)
    mask[sprite.shape[0] // 2:] = True
    shown = sprite.copy()
    shown[mask] = (255, 0, 255)
    rows = []
    jumps = (min(JUMPS[0], settings.steps), JUMPS[1])
    plans = [(0, 1), jumps]
    total = sum(len(EditPlan(jump_length=j, jump_n_sample=r).visit_order(settings.steps)) for j, r in plans)
    with tqdm(total=total, unit="step", desc="repaint strip", file=sys.stderr) as bar:
        for jump_length, jump_n_sample in plans:
            out = pipe.inpaint(sprite, mask, settings.source, settings.strip_variations, settings.steps,
                               settings.sampler, guidance_scale=settings.guidance_scale, jump_length=jump_length,
                               jump_n_sample=jump_n_sample, seed=settings.seed, callback=lambda *_: bar.update())
            rows.append(np.concatenate([sprite[None], shown[None], out.array]))
    return labelled_sheet(np.stack(rows), ["input", "mask", *[""] * settings.strip_variations],
                          ["no jumps", f"jumps {jumps[0]} x {jumps[1]}"])


# ---- the study ------------------------------------------------------------------------------
def run_study(pipe: Any, evaluator: Any, settings: Settings, out_dir: Path, command: str = "") -> dict[str, Any]:
    """Every part; writes the JSON, the Markdown and the strips to out_dir and returns the JSON's content."""
    if list(pipe.context_names) != list(evaluator.names):
        raise ValueError(f"the model's contexts {pipe.context_names} are not the judge's {evaluator.names}")
    if settings.sampler not in COURSE_SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(COURSE_SAMPLERS)} (their steps follow the grid)")
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    faithful_idx, transfer_idx, topped_up = choose_sprites(evaluator, settings)
    strip_sprite = int(transfer_idx[0])
    results: dict[str, Any] = {
        "command": command, "settings": asdict(settings), "machine": machine_info(pipe.device),
        "distance_unit": "RMS difference of uint8 RGB values (0-255) to the input sprite, mean over sprites",
        "faithfulness": {"sprites": faithful_idx.tolist(),
                         "rows": faithfulness(pipe, evaluator, faithful_idx, settings)},
        "transfer": {"sprites": transfer_idx.tolist(), "from_training_split": topped_up,
                     "judge_heldout_accuracy_target": evaluator.heldout_accuracy.get(settings.target),
                     "rows": transfer(pipe, evaluator, transfer_idx, settings)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    redraw_strip(pipe, evaluator.real[strip_sprite], settings).save(out_dir / "redraw_strip.png")
    repaint_strip(pipe, evaluator.real[strip_sprite], settings).save(out_dir / "repaint_strip.png")
    results["strips"] = {"sprite": strip_sprite, "redraw": "redraw_strip.png", "repaint": "repaint_strip.png",
                         "repaint_mask": "lower half", "repaint_jumps": [min(JUMPS[0], settings.steps), JUMPS[1]]}
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "redraw_study.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "redraw_study.md").write_text(markdown(results) + "\n")
    return results


def markdown(results: dict[str, Any]) -> str:
    """The two tables and a line on how and where they were measured."""
    s, machine = results["settings"], results["machine"]
    faithful, moved = results["faithfulness"], results["transfer"]
    lines = [f"Faithfulness: {len(faithful['sprites'])} held-out sprites, each redrawn under its own context.", "",
             "| strength | t0 | steps run | mean distance to input | median | judge: still its context |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['strength']:g} | {r['t0']} | {r['steps_run']} | {r['mean_distance']:.1f} | "
              f"{r['median_distance']:.1f} | {r['judged_own_context']:.0%} |" for r in faithful["rows"]]
    topped = moved["from_training_split"]
    topped = f" ({topped} of them from the judge's training split: too few held out)" if topped else ""
    lines += ["", f"Context transfer: {len(moved['sprites'])} held-out {s['source']} sprites{topped} redrawn as "
              f"{s['target']} (strength 0: as they are). The judge calls {moved['judge_heldout_accuracy_target']:.0%} "
              f"of held-out real {s['target']} sprites {s['target']}.", "",
              f"| strength | t0 | steps run | judge: {s['target']} | judge: {s['source']} | mean distance to input |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['strength']:g} | {r['t0']} | {r['steps_run']} | {r['judged_target']:.0%} | "
              f"{r['judged_source']:.0%} | {r['mean_distance']:.1f} |" for r in moved["rows"]]
    lines += ["", f"Distance: {results['distance_unit']}. {s['sampler'].upper()} {s['steps']} steps, guidance "
              f"{s['guidance_scale']:g}, seed {s['seed']} (+ k for sprite k); {machine['cpu']}, "
              f"{machine['torch_threads']} torch thread(s), {results['seconds'] / 60:.1f} min in all.",
              f"Command: `{results['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--dataset", default="default", help="dataset whose judge's held-out sprites are redrawn")
    parser.add_argument("--judge", default=None, help="judge folder (default: training/judges/<dataset>)")
    parser.add_argument("--out_dir", type=Path, default=Path("docs/figures"))
    parser.add_argument("--num_sprites", type=int, default=defaults.num_sprites)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--sampler", choices=COURSE_SAMPLERS, default=defaults.sampler)
    parser.add_argument("--guidance_scale", type=float, default=defaults.guidance_scale)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--source", default=defaults.source)
    parser.add_argument("--target", default=defaults.target)
    for name in ("faithful_strengths", "transfer_strengths", "strip_strengths"):
        parser.add_argument(f"--{name}", type=float, nargs="+", default=getattr(defaults, name))
    parser.add_argument("--strip_variations", type=int, default=defaults.strip_variations)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings(**{name: getattr(args, name) for name in asdict(defaults)})
    pipe = load_pipeline(args.model)
    evaluator = Evaluator(args.dataset, args.judge or default_judge_dir(args.dataset),
                          resolution=pipe.unet.config.sample_size)
    for name in (settings.source, settings.target):
        if name not in evaluator.names:
            parser.error(f"unknown context {name!r}; the dataset has {', '.join(evaluator.names)}")
    command = shlex.join(["python", "-m", "studies.redraw_study", *(sys.argv[1:] if argv is None else argv)])
    results = run_study(pipe, evaluator, settings, args.out_dir, command)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
