"""The quality bar and the results tables: every figure of training/evaluate.py held against what real
sprites score on the same footing, so the bar moves with the dataset and the sample size (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.metrics import BACKGROUND_NEAR_LEVELS, COLOUR_GROUP_LEVELS

PIXEL_STATISTICS = ("background_exact_share", "colours_per_sprite", "high_frequency_energy")  # in the bar
PER_CONTEXT_FIGURES = ("precision", "recall", "background_exact_share", "background_near_share", "colours_per_sprite",
                       "colour_groups_per_sprite", "dark_outline_share")
# Diagnostics, not in the bar: what of the gap shows to an eye.
EYE_STATISTICS = ("background_near_share", "colour_groups_per_sprite", "dark_outline_share")

# The quality bar (quality_bar_failures): every figure held against what real sprites score on the same footing.
CONTEXT_ACCURACY_MARGIN = 0.02  # overall context accuracy >= the judge's held-out accuracy minus this
LOWEST_CONTEXT_ACCURACY = 0.85  # and no context below this
PRECISION_RECALL_SHARE = 0.9  # precision and recall each >= this share of the real subset's
MAX_MEMORISATION = 0.05  # share of samples that copy a training sprite
PIXEL_TOLERANCE = 0.25  # each pixel statistic within this share of the real sprites' value


def quality_bar_failures(result: dict[str, Any]) -> list[str]:
    """What a run misses of the quality bar (the constants at the top); empty when it passes.

    Every figure is held against its real twin, so the bar moves with the dataset and the sample size.
    The Fréchet distance stays in the results but not in the bar: at 40-200 samples per context in 128-d
    features its small-sample bias dominates both FDs, so their ratio is compressed toward 1.
    """
    def below(value: float, bound: float) -> bool:  # rounding aside; NaN misses every bound
        return not value >= bound - 1e-9

    def above(value: float, bound: float) -> bool:
        return not value <= bound + 1e-9

    failures = []
    lowest = result["judge_heldout_accuracy"] - CONTEXT_ACCURACY_MARGIN
    if below(result["context_accuracy"], lowest):
        failures.append(f"context accuracy {result['context_accuracy']:.3f} < {lowest:.3f} (the judge's "
                        f"{result['judge_heldout_accuracy']:.3f} on real sprites - {CONTEXT_ACCURACY_MARGIN})")
    failures += [f"{name} accuracy {value:.3f} < {LOWEST_CONTEXT_ACCURACY}"
                 for name, value in result["context_accuracy_per_context"].items()
                 if below(value, LOWEST_CONTEXT_ACCURACY)]
    for name in ("precision", "recall"):
        value, real = result[name], result[f"{name}_real"]
        if below(value, PRECISION_RECALL_SHARE * real):
            failures.append(f"{name} {value:.3f} < {PRECISION_RECALL_SHARE} x {real:.3f} (real sprites) "
                            f"= {PRECISION_RECALL_SHARE * real:.3f}")
    if above(result["memorisation_rate"], MAX_MEMORISATION):
        failures.append(f"memorisation {result['memorisation_rate']:.1%} > {MAX_MEMORISATION:.0%}")
    for name in PIXEL_STATISTICS:
        value, real = result[name], result[f"{name}_real"]
        if above(abs(value - real), PIXEL_TOLERANCE * real):
            failures.append(f"{name.replace('_', ' ')} {value:.3f} is more than {PIXEL_TOLERANCE:.0%} off "
                            f"the real sprites' {real:.3f}")
    return failures


def run_label(r: dict[str, Any]) -> str:
    """'DDPM 500, guidance 2': a run's sampler, steps and guidance (or its saved samples' file name)."""
    label = f"{r['sampler'].upper()} {r['steps']}" if r.get("sampler") else Path(r.get("samples") or "?").stem
    label += f", guidance {r['guidance_scale']:g}" if r.get("guidance_scale") not in (None, 1) else ""
    label += " (one pass)" if r.get("guidance_scale") not in (None, 1) and r.get("guidance_passes") == 1 else ""
    return label + (f", whole U-Net every {r['cache_interval']} steps" if r.get("cache_interval", 1) > 1 else "")


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results tables (docs/evaluation.md), one row per run, each cell "samples (real)": the judge's and
    feature-space figures first, then the pixel statistics and the per-context accuracies (one would be too wide)."""
    names = list(results[0]["context_accuracy_per_context"])
    header = ["run", "context accuracy", "precision", "recall", "KID", "Fréchet distance, ratio",
              "memorisation", "seconds"]
    header2 = ["run", "exact background", "colours per sprite", "high-frequency energy",
               f"background within {BACKGROUND_NEAR_LEVELS} levels", f"colours within {COLOUR_GROUP_LEVELS} levels",
               "dark outline", *names]
    rows, rows2 = [], []
    for r in results:
        rows.append([run_label(r), f"{r['context_accuracy']:.3f} ({r['judge_heldout_accuracy']:.3f})",
                     *(f"{r[n]:.3f} ({r[n + '_real']:.3f})" for n in ("precision", "recall")),
                     f"{r['kid']:.2f} ({r['kid_real']:.2f})",
                     f"{r['frechet_distance']:.2f} ({r['frechet_real_vs_real']:.2f}), {r['frechet_ratio']:.1f}x",
                     f"{r['memorisation_rate']:.1%} ({r['memorisation_real_reference']:.1%})",
                     "" if r.get("seconds") is None else f"{r['seconds']:.0f}"])
        rows2.append([run_label(r), *(f"{r[n]:.3f} ({r[n + '_real']:.3f})" for n in PIXEL_STATISTICS),
                      *(f"{r[n]:.3f} ({r[n + '_real']:.3f})" if n in r else "" for n in EYE_STATISTICS),
                      *(f"{r['context_accuracy_per_context'][n]:.3f} ({r['judge_heldout_accuracy_per_context'][n]:.3f})"
                        for n in names)])
    return _markdown(header, rows) + "\n\n" + _markdown(header2, rows2)


def per_context_table(r: dict[str, Any]) -> str:
    """One run's figures per context, each cell "samples (that context's real sprites)": a weak context shows here."""
    header = ["context", "context accuracy", "precision", "recall", "exact background",
              f"background within {BACKGROUND_NEAR_LEVELS} levels", "colours per sprite",
              f"colours within {COLOUR_GROUP_LEVELS} levels", "dark outline"]
    accuracy, accuracy_real = r["context_accuracy_per_context"], r["judge_heldout_accuracy_per_context"]
    rows = [[f"{name} ({row['samples']})", f"{accuracy[name]:.3f} ({accuracy_real[name]:.3f})",
             *(f"{row[n]:.3f} ({row[n + '_real']:.3f})" if n in row else "" for n in PER_CONTEXT_FIGURES)]
            for name, row in r["per_context"].items()]
    return _markdown(header, rows)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
