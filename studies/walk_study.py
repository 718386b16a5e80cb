"""Where along a walk from one context to another does a sprite change kind? The judge's verdict at every stop.

    python -m studies.walk_study                                   # the bundled model, the app's sampler
    python -m studies.walk_study --num_sprites 8 --steps 3         # a quick try

For each pair, ``--num_sprites`` sprites (in groups of 64, group k from seed + k) walk from the first context to
the second in ``--stops`` even steps of the weights (model/walk.py, as the app's Walk: every stop from the same
seed, so the same noise). At every stop, the judge of the dataset (training/judges/<dataset>) says which context
each sprite is, and the RMS distance to the same sprite at the first stop says how far it has moved. Writes
walk_study.json (every figure, the settings, the machine), walk_study.md (the table, also printed) and
walk_study.png (the share judged the end context, against the end's weight) to --out_dir.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model import MAX_IMAGES, SAMPLERS, load_pipeline
from model.walk import context_walk
from studies.redraw_study import rms_distance
from training.evaluate import Evaluator, default_judge_dir, machine_info
from training.judge import judge_outputs

PAIRS = ["hero:food", "hero:non-hero", "spell:item"]


def walk_pair(pipe: Any, evaluator: Any, start: str, end: str, settings: dict[str, Any],
              bar: tqdm) -> list[dict[str, Any]]:
    """One row per stop: the end's weight, the shares the judge calls start and end, the distance moved.
    Sprites walk in groups of at most MAX_IMAGES (what one pipeline call draws), group k from seed + k."""
    stops, names = settings["stops"], evaluator.names
    per_stop = [[] for _ in range(stops)]
    for k, first in enumerate(range(0, settings["num_sprites"], MAX_IMAGES)):
        group = min(MAX_IMAGES, settings["num_sprites"] - first)
        walk = context_walk(pipe, start, end, stops, group, settings["seed"] + k,
                            num_inference_steps=settings["steps"], sampler=settings["sampler"],
                            guidance_scale=settings["guidance_scale"], callback=lambda *_: bar.update())
        weights = []
        for stop, (w, sprites) in enumerate(walk):
            weights.append(w)
            per_stop[stop].append(sprites)
    sprites = [np.concatenate(s) for s in per_stop]
    rows = []
    for stop, (w, drawn) in enumerate(zip(weights, sprites, strict=True)):
        verdict = judge_outputs(evaluator.judge, drawn)[0]
        rows.append({"end_weight": stop / (stops - 1), "weights": [round(float(x), 4) for x in w],
                     "judged_start": float((verdict == names.index(start)).mean()),
                     "judged_end": float((verdict == names.index(end)).mean()),
                     "distance_from_first": float(rms_distance(drawn, sprites[0]).mean())})
    return rows


def run_study(pipe: Any, evaluator: Any, pairs: list[tuple[str, str]], settings: dict[str, Any], out_dir: Path,
              command: str = "") -> dict[str, Any]:
    """Every pair; writes the JSON, the Markdown and the plot to out_dir and returns the JSON's content."""
    if list(pipe.context_names) != list(evaluator.names):
        raise ValueError(f"the model's contexts {pipe.context_names} are not the judge's {evaluator.names}")
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    results: dict[str, Any] = {"command": command, "settings": settings, "machine": machine_info(pipe.device),
                               "distance_unit": "RMS difference of uint8 RGB values (0-255) to the same sprite at "
                                                "the first stop, mean over sprites",
                               "judge_heldout_accuracy": evaluator.heldout_accuracy, "pairs": []}
    total = len(pairs) * -(-settings["num_sprites"] // MAX_IMAGES) * settings["stops"] * settings["steps"]
    with tqdm(total=total, unit="step", desc=f"{len(pairs)} walks of {settings['num_sprites']} sprites",
              file=sys.stderr) as bar:
        for a, b in pairs:
            results["pairs"].append({"start": a, "end": b, "rows": walk_pair(pipe, evaluator, a, b, settings, bar)})
    results["seconds"] = round(time.perf_counter() - start, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "walk_study.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "walk_study.md").write_text(markdown(results) + "\n")
    plot(results, out_dir / "walk_study.png")
    return results


def markdown(results: dict[str, Any]) -> str:
    """One table, a row per stop and a column group per pair, and a line on how and where it was measured."""
    pairs, s, machine = results["pairs"], results["settings"], results["machine"]
    head = " | ".join(f"{p['start']} / {p['end']} judged | moved" for p in pairs)
    lines = [f"| weight of the end | {head} |", "| ---: |" + " ---: | ---: |" * len(pairs)]
    for i, row in enumerate(pairs[0]["rows"]):
        cells = " | ".join(f"{p['rows'][i]['judged_start']:.0%} / {p['rows'][i]['judged_end']:.0%} | "
                           f"{p['rows'][i]['distance_from_first']:.1f}" for p in pairs)
        lines.append(f"| {row['end_weight']:.2f} | {cells} |")
    accuracy = results["judge_heldout_accuracy"]
    ends = sorted({p[k] for p in pairs for k in ("start", "end")})
    lines += ["", f"{s['num_sprites']} sprites per walk, {SAMPLERS[s['sampler']].label} {s['steps']} steps, guidance "
              f"{s['guidance_scale']:g}, seed {s['seed']}. The judge's accuracy on held-out real sprites: "
              + ", ".join(f"{n} {accuracy[n]:.0%}" for n in ends)
              + f". Moved: {results['distance_unit']}. {machine['cpu']}, {machine['torch_threads']} torch "
              f"thread(s), {results['seconds'] / 60:.1f} min in all.", f"Command: `{results['command']}`"]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """The share judged the end context (solid) and the start context (dashed) against the end's weight."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    axes = figure.add_subplot()
    for i, pair in enumerate(results["pairs"]):
        x = [r["end_weight"] for r in pair["rows"]]
        colour = f"C{i}"
        axes.plot(x, [r["judged_end"] for r in pair["rows"]], "-o", color=colour,
                  label=f"{pair['start']} to {pair['end']}: judged {pair['end']}")
        axes.plot(x, [r["judged_start"] for r in pair["rows"]], "--", color=colour, alpha=0.6,
                  label=f"judged {pair['start']}")
    axes.set(xlabel="weight of the end context (the start's is 1 minus it)", ylabel="share of sprites",
             ylim=(-0.02, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left")
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--dataset", default="default", help="the dataset whose judge says what each sprite is")
    parser.add_argument("--judge", default=None, help="judge folder (default: training/judges/<dataset>)")
    parser.add_argument("--out_dir", type=Path, default=Path("docs/figures"))
    parser.add_argument("--pairs", nargs="+", default=PAIRS, metavar="START:END")
    parser.add_argument("--num_sprites", type=int, default=200, help="sprites per walk")
    parser.add_argument("--stops", type=int, default=7)
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="dpm++2m-sde")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    evaluator = Evaluator(args.dataset, args.judge or default_judge_dir(args.dataset),
                          resolution=pipe.unet.config.sample_size)
    pairs = [tuple(p.split(":")) for p in args.pairs]
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(evaluator.names):
            parser.error(f"--pairs: {':'.join(pair)!r} is not START:END of two of {', '.join(evaluator.names)}")
    settings = {k: getattr(args, k) for k in ("num_sprites", "stops", "sampler", "steps", "guidance_scale", "seed")}
    command = shlex.join(["python", "-m", "studies.walk_study", *(sys.argv[1:] if argv is None else argv)])
    results = run_study(pipe, evaluator, pairs, settings, args.out_dir, command)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
