"""The architecture study's table: quality of each trained preset against its CPU sampling cost.

Reads what `studies/architecture_study.sh` and `benchmarks/model_cost.py --json` wrote:

    python -m studies.study_table runs/study            # runs/study/<preset>/eval.json + runs/study/cost.json

and prints one Markdown row per preset, smallest first, for docs/study-history.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _run_label(result: dict[str, Any]) -> str:
    label = f"{result['sampler'].upper()} {result['steps']}"
    return label + (f" g{result['guidance_scale']:g}" if result["guidance_scale"] != 1 else "")


def study_rows(evaluations: dict[str, list[dict[str, Any]]], costs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per preset that has both an evaluation and a cost, ordered by parameters."""
    rows = []
    for preset in sorted(set(evaluations) & set(costs), key=lambda p: costs[p]["parameters"]):
        cost = costs[preset]
        row = [preset, cost["channels"], "yes" if cost["attention"] else "no", f"{cost['parameters'] / 1e6:.2f}M",
               f"{cost['ms_per_step']:.1f}", f"{cost['ms_per_step_guided'] * 500 / 1000:.1f}"]
        for result in evaluations[preset]:
            per_context = result["context_accuracy_per_context"]
            lowest = min(per_context, key=per_context.get)
            row += [f"{result['context_accuracy']:.3f}", f"{per_context[lowest]:.2f} ({lowest})",
                    f"{result['frechet_ratio']:.1f}x", f"{result['memorisation_rate']:.1%}"]
        rows.append(row)
    return rows


def study_table(evaluations: dict[str, list[dict[str, Any]]], costs: dict[str, dict[str, Any]]) -> str:
    """The Markdown table; the run columns come from the first preset's evaluation (all must match)."""
    runs = [_run_label(r) for r in next(iter(evaluations.values()))]
    for preset, results in evaluations.items():
        if [_run_label(r) for r in results] != runs:
            raise ValueError(f"{preset} was evaluated with other runs ({[_run_label(r) for r in results]}) "
                             f"than the others ({runs}); rerun its evaluation")
    header = ["preset", "channels", "attention", "parameters", "ms per step", "16 sprites, DDPM 500 guided, s"]
    for run in runs:
        header += [f"{run}: accuracy", f"{run}: lowest context", f"{run}: FD ratio", f"{run}: memorisation"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in study_rows(evaluations, costs)])


def load_study(folder: Path, cost_file: Path | None = None) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """The evaluations (folder/<preset>/eval.json) and the costs (folder/cost.json by default)."""
    evaluations = {}
    for path in sorted(folder.glob("*/eval.json")):
        saved = json.loads(path.read_text())
        evaluations[path.parent.name] = saved if isinstance(saved, list) else [saved]
    cost_file = cost_file or folder / "cost.json"
    costs = {row["preset"]: row for row in json.loads(cost_file.read_text())["presets"]}
    return evaluations, costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the study's output folder (OUT of architecture_study.sh)")
    parser.add_argument("--cost", type=Path, default=None, help="model_cost.py's --json (default: FOLDER/cost.json)")
    args = parser.parse_args(argv)
    try:
        evaluations, costs = load_study(args.folder, args.cost)
        if not evaluations:
            raise ValueError(f"no <preset>/eval.json under {args.folder}")
        missing = sorted(set(evaluations) - set(costs))
        if missing:
            raise ValueError(f"no cost measured for {', '.join(missing)}: run benchmarks/model_cost.py --presets ...")
        print(study_table(evaluations, costs))
    except (OSError, ValueError, KeyError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
