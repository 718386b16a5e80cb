"""Steps versus quality: every sampler of model/samplers.py at 5-100 steps (DDPM also at 500), scored with
training/evaluate.py's evaluation and timed at the app's request (16 sprites, compiled U-Net as the app runs it).

    python -m studies.steps_quality --phase quality   # the scores; may run in the background (OMP_NUM_THREADS=1)
    python -m studies.steps_quality --phase timing    # seconds per 16 sprites: run it with nothing else running
    python -m studies.steps_quality --phase plot      # the plot and the Markdown table from the JSON

Results accumulate in one JSON (--json, one row per sampler and step count, saved after every row), so the
phases can run at different times and an interrupted run keeps what it measured. Without --phase it runs all
three, for any model (--model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from model import SAMPLERS, load_pipeline
from training.evaluate import Evaluator, default_judge_dir, machine_info
from training.quality_bar import PIXEL_STATISTICS, quality_bar_failures

STEP_COUNTS = (5, 10, 20, 50, 100)
EXTRA_STEPS = {"ddpm": (500,)}  # the course's sampler is made for every step
APP_REQUEST = 16  # sprites per timed request, as the app's default
FIGURES = ("context_accuracy", "precision", "recall", "kid", *PIXEL_STATISTICS, "memorisation_rate")
DEFAULT_JSON = Path("docs/figures/steps_quality.json")


def all_runs(samplers: list[str] | None = None, step_counts: tuple[int, ...] = STEP_COUNTS) -> list[tuple[str, int]]:
    """(sampler, steps) for every registered sampler at every step count, plus DDPM's 500."""
    return [(name, steps) for name in samplers or SAMPLERS
            for steps in sorted({*step_counts, *EXTRA_STEPS.get(name, ())})]


def _key(sampler: str, steps: int) -> str:
    return f"{sampler}:{steps}"


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"rows": {}}


def save_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def measure_quality(pipe, evaluator: Evaluator, runs: list[tuple[str, int]], results: dict[str, Any], path: Path,
                    guidance_scale: float, num_per_context: int, seed: int = 0) -> None:
    """Score each run with the evaluation of training/evaluate.py; one JSON row per run, saved as it comes."""
    results["quality_settings"] = {"guidance_scale": guidance_scale, "num_per_context": num_per_context,
                                   "seed": seed, "machine": machine_info(pipe.device)}
    for sampler, steps in runs:
        scores = evaluator.run(pipe, num_per_context, sampler, steps, guidance_scale, seed)
        row = results["rows"].setdefault(_key(sampler, steps), {})
        row.update(sampler=sampler, steps=steps, **{name: scores[name] for name in FIGURES},
                   **{f"{name}_real": scores[f"{name}_real"] for name in ("precision", "recall", "kid")},
                   **{f"{name}_real": scores[f"{name}_real"] for name in PIXEL_STATISTICS},
                   judge_heldout_accuracy=scores["judge_heldout_accuracy"],
                   lowest_context_accuracy=min(scores["context_accuracy_per_context"].values()),
                   failures=quality_bar_failures(scores),
                   failures_besides_pixels=quality_bar_failures(
                       {**scores, **{name: scores[f"{name}_real"] for name in PIXEL_STATISTICS}}))
        save_results(results, path)
        print(f"{sampler} {steps}: accuracy {row['context_accuracy']:.3f}, precision {row['precision']:.3f}, "
              f"recall {row['recall']:.3f}, KID {row['kid']:.2f}; {len(row['failures'])} bar failures", flush=True)


def measure_seconds(pipe, runs: list[tuple[str, int]], results: dict[str, Any], path: Path,
                    guidance_scale: float, repeats: int = 3) -> None:
    """Seconds for the app's request (16 sprites of the first context) per run: the U-Net compiled for 16 sprites
    as the app does it, a 2-step warm-up, then the median of ``repeats`` (one run only where a run takes over 20 s)."""
    rows = APP_REQUEST * (2 if guidance_scale != 1.0 else 1)
    pipe.enable_fast_sampling(batch_sizes=(rows,))
    results["timing_settings"] = {"guidance_scale": guidance_scale, "sprites": APP_REQUEST,
                                  "compiled": True, "machine": machine_info(pipe.device)}
    for sampler, steps in runs:
        def request(sampler: str = sampler, steps: int = steps) -> float:
            start = time.perf_counter()
            pipe(pipe.context_names[0], num_images=APP_REQUEST, num_inference_steps=steps, sampler=sampler,
                 guidance_scale=guidance_scale, seed=0)
            return time.perf_counter() - start

        request(steps=2)  # warm-up (the sampler's first call builds its tables): not counted
        times = [request()]
        while len(times) < repeats and sum(times) < 20:
            times.append(request())
        row = results["rows"].setdefault(_key(sampler, steps), {"sampler": sampler, "steps": steps})
        row["seconds_per_16"] = round(statistics.median(times), 3)
        save_results(results, path)
        print(f"{sampler} {steps}: {row['seconds_per_16']:.2f} s for {APP_REQUEST} sprites", flush=True)


def fastest_passing(results: dict[str, Any], besides_pixels: bool = False) -> dict[str, Any] | None:
    """The run that meets the quality bar in the fewest seconds (besides_pixels: ignoring the pixel statistics)."""
    key = "failures_besides_pixels" if besides_pixels else "failures"
    passing = [r for r in results["rows"].values() if key in r and not r[key] and "seconds_per_16" in r]
    return min(passing, key=lambda r: r["seconds_per_16"], default=None)


def markdown_table(results: dict[str, Any]) -> str:
    """One row per run: the figures next to their real twins, the seconds, and what the bar says."""
    rows = sorted(results["rows"].values(), key=lambda r: (list(SAMPLERS).index(r["sampler"]), r["steps"]))
    lines = ["| sampler | steps | s / 16 sprites | accuracy (judge on real) | lowest context | precision (real) | "
             "recall (real) | KID (real) | colours / sprite (real) | bar |",
             "| --- | ---: | ---: | --- | ---: | --- | --- | --- | --- | --- |"]

    def number(row: dict[str, Any], name: str, digits: int = 3) -> str:
        return f"{row[name]:.{digits}f}" if isinstance(row.get(name), int | float) else "-"

    for r in rows:
        if "failures" not in r:
            verdict = "-"
        elif not r["failures"]:
            verdict = "passes"
        elif not r["failures_besides_pixels"]:
            verdict = "pixel statistics only"
        else:
            verdict = f"{len(r['failures_besides_pixels'])} besides pixels"
        lines.append(
            f"| {SAMPLERS[r['sampler']].label} | {r['steps']} | {number(r, 'seconds_per_16', 2)} | "
            f"{number(r, 'context_accuracy')} ({number(r, 'judge_heldout_accuracy')}) | "
            f"{number(r, 'lowest_context_accuracy')} | {number(r, 'precision')} ({number(r, 'precision_real')}) | "
            f"{number(r, 'recall')} ({number(r, 'recall_real')}) | "
            f"{number(r, 'kid', 1)} ({number(r, 'kid_real', 1)}) | "
            f"{number(r, 'colours_per_sprite', 0)} ({number(r, 'colours_per_sprite_real', 0)}) | {verdict} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Accuracy, precision, recall, KID, colours per sprite and seconds against steps, one line per sampler,
    the real sprites' value dashed."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, safe in any thread
    from matplotlib.ticker import ScalarFormatter

    panels = [("context_accuracy", "context accuracy", "judge_heldout_accuracy"),
              ("precision", "precision", "precision_real"), ("recall", "recall", "recall_real"),
              ("kid", "KID (lower is better)", "kid_real"),
              ("colours_per_sprite", "colours per sprite", "colours_per_sprite_real"),
              ("seconds_per_16", "seconds per 16 sprites (2-core CPU)", None)]
    figure = Figure(figsize=(12, 6.6), dpi=80, layout="constrained")
    axes = figure.subplots(2, 3).ravel()
    for ax, (name, title, real) in zip(axes, panels, strict=True):
        for sampler in SAMPLERS:
            rows = sorted((r for r in results["rows"].values() if r["sampler"] == sampler and name in r),
                          key=lambda r: r["steps"])
            if rows:
                ax.plot([r["steps"] for r in rows], [r[name] for r in rows], marker="o", markersize=4,
                        label=SAMPLERS[sampler].label)
        values = [r[real] for r in results["rows"].values() if real and real in r]
        if values:
            ax.axhline(statistics.mean(values), color="black", linestyle="--", linewidth=1, label="real sprites")
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 20, 50, 100, 500], labels=["5", "10", "20", "50", "100", "500"])
        if name in ("kid", "colours_per_sprite", "seconds_per_16"):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
            ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(title)
        ax.set_xlabel("steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--dataset", default="default", help="dataset whose judge scores the samples")
    parser.add_argument("--judge", default=None, help="judge folder (default: training/judges/<dataset>)")
    parser.add_argument("--phase", choices=["quality", "timing", "plot", "all"], default="all")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write (default: next to --json)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=None)
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEP_COUNTS))
    parser.add_argument("--guidance_scale", type=float, default=2.0, help="the app's default")
    parser.add_argument("--num_per_context", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = sorted(all_runs(args.samplers, tuple(args.steps)), key=lambda run: run[1])  # cheap runs first
    results = load_results(args.json)
    results["model"] = args.model or "bundled default"
    if args.phase in ("quality", "timing", "all"):
        pipe = load_pipeline(args.model)
        pipe.set_progress_bar_config(disable=True)
        if args.phase in ("quality", "all"):
            evaluator = Evaluator(args.dataset, args.judge or default_judge_dir(args.dataset),
                                  resolution=pipe.unet.config.sample_size)
            measure_quality(pipe, evaluator, runs, results, args.json, args.guidance_scale, args.num_per_context)
        if args.phase in ("timing", "all"):
            measure_seconds(pipe, runs, results, args.json, args.guidance_scale)
    png = plot(results, args.plot or args.json.with_suffix(".png"))
    report = summary(results)
    args.json.with_suffix(".md").write_text(report + "\n")
    print(report + f"\n\nplot: {png}")


def summary(results: dict[str, Any]) -> str:
    """The Markdown table, where and how it was measured, and the fastest run that meets the bar."""
    lines = [markdown_table(results), ""]
    for phase, what in (("quality_settings", "scores"), ("timing_settings", "seconds")):
        settings = results.get(phase)
        if settings:
            machine = settings["machine"]
            lines.append(f"- {what}: {machine['cpu']}, {machine['torch_threads']} torch threads, "
                         f"{machine.get('gpu', machine['device'])}; " + ", ".join(
                             f"{k} {v}" for k, v in settings.items() if k != "machine"))
    for text, row in (("meets the whole quality bar", fastest_passing(results)),
                      ("meets the bar besides the pixel statistics", fastest_passing(results, besides_pixels=True))):
        lines.append(f"- fastest that {text}: " + (f"{SAMPLERS[row['sampler']].label}, {row['steps']} steps, "
                                                   f"{row['seconds_per_16']:.2f} s" if row else "none"))
    return "\n".join(lines)

if __name__ == "__main__":
    main()
