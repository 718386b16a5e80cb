"""The quality study: train every arm for the same budget with train.py, sample each, score each.

An arm is a preset plus train.py flags (data, objective); every arm gets the same steps, batch, learning
rate and seed. The arms run side by side, one `accelerate launch training/train.py` process each: on a GPU
these small models leave the chip mostly idle, so parallel processes cost little more than one.

    python -m studies.quality_study --out runs/study                      # every arm (a GPU: minutes)
    python -m studies.quality_study --out runs/study --arms small-g8 tiny-g4 --steps 6000
    python -m studies.quality_study --out /tmp/s --arms tiny-g4 --steps 20 --num_per_context 4 \\
        --settings ddim:5:2 --config training/configs/cpu.yaml              # a smoke test on a CPU

Each arm's folder gets the pipeline, train.log and samples.npz (``images``, ``requested`` per setting);
study.json collects every score (training/evaluate.py's figures and the quality bar's verdict). Samples
are drawn in one batch per setting with the same seed for every arm, so arms differ only by their model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import build_unet, load_pipeline, to_uint8
from training.evaluate import Evaluator, machine_info, parse_run
from training.quality_bar import quality_bar_failures
from training.sprite_data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
# The shared recipe; each arm adds its own flags. Same seed, so arms of one preset start from the same weights.
RECIPE = ["--train_batch_size", "256", "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
          "--lr_warmup_steps", "200", "--context_dropout", "0.1", "--seed", "0", "--checkpointing_steps", "0",
          "--save_images_steps", "0", "--logger", "none", "--logging_steps", "50"]
SAMPLE_SEED = 0
PALETTE_JUDGE, AREA_JUDGE = ROOT / "training/judges/default", ROOT / "training/judges/default-area"


def arm(preset: str, *flags: str, steps: float = 1.0, dataset: str = "default", judge: Path = PALETTE_JUDGE,
        context_names: str | None = None) -> dict[str, Any]:
    return {"preset": preset, "flags": list(flags), "steps": steps, "dataset": dataset, "judge": str(judge),
            "context_names": context_names}


V_SNR = ("--prediction_type", "v_prediction", "--snr_gamma", "5")
ARMS: dict[str, dict[str, Any]] = {
    # the data: the area-averaged 16 px sprites (the old default) against the palette-preserving downscale
    "small-g8-area": arm("small-g8", "--downscale", "area", judge=AREA_JUDGE),
    # width and depth, 4-8 channels per GroupNorm group
    "tiny-g4": arm("tiny-g4"),
    "small-g8": arm("small-g8"),
    "small2-g8": arm("small2-g8"),
    "medium1-g16": arm("medium1-g16"),
    "medium-g16": arm("medium-g16"),
    # the objective: v-prediction with min-SNR-5 weighting against the course's epsilon and plain MSE
    "small-g8-v-snr5": arm("small-g8", *V_SNR),
}
# Defined but not in the default run (a 15-minute GPU slot holds about nine arms): run them by name.
EXTRA_ARMS: dict[str, dict[str, Any]] = {
    "tiny-g4-area": arm("tiny-g4", "--downscale", "area", judge=AREA_JUDGE),
    "large-g16": arm("large-g16"),
    "small-g8-snr5": arm("small-g8", "--snr_gamma", "5"),
    "medium1-g16-v-snr5": arm("medium1-g16", *V_SNR),
    "small-g8-third": arm("small-g8", steps=1 / 3),
    # the same sprites seen in 4x the optimizer steps (batch 64, learning rate scaled by sqrt(64/256)): on the
    # second set, on the CPU, crisper sprites but more of them memorised (docs/study.md)
    "medium1-g16-b64": arm("medium1-g16", "--train_batch_size", "64", "--learning_rate", "5e-4", steps=4.0),
}
SECOND_SET = ROOT / "data" / "nethack" / "sprites_nethack.npy"  # a set the recipe was not tuned on (docs/)


# The "-short" arm's share of the budget: 2,000 of 10,000 steps, 667 epochs of the second set, next to the recipe's
# 600 (1,800 steps). On the CPU (docs/study.md) 800 steps were undertrained and 1,800 memorised nothing.
SHORT = 0.2


def second_set_arms(steps: float = 1.0, suffix: str = "") -> dict[str, dict[str, Any]]:
    """The same recipe on the second dataset, when it is there, at ``steps`` of the budget."""
    if not SECOND_SET.is_file():
        return {}
    names_file = SECOND_SET.parent / "context_names.txt"
    names = ",".join(names_file.read_text().split()) if names_file.is_file() else None
    judge = ROOT / "training" / "judges" / SECOND_SET.parent.name
    return {f"{SECOND_SET.parent.name}-{p}{suffix}": arm(p, dataset=str(SECOND_SET), judge=judge,
                                                         context_names=names, steps=steps)
            for p in ("small-g8", "medium1-g16")}


def all_arms() -> tuple[dict[str, dict[str, Any]], set[str]]:
    """(every arm by name, the names a default run leaves out). The second set's "-short" arms get a budget sized
    for its 760 sprites, where the full one memorised (docs/study.md); they run by name only."""
    short = second_set_arms(SHORT, "-short")
    return {**ARMS, **second_set_arms(), **EXTRA_ARMS, **short}, {*EXTRA_ARMS, *short}


def train_command(name: str, spec: dict[str, Any], args: argparse.Namespace) -> list[str]:
    steps = max(1, round(args.steps * spec["steps"]))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(args.config),
               str(ROOT / "training" / "train.py"), *RECIPE, "--model_config", spec["preset"],
               "--max_train_steps", str(steps), "--dataset", spec["dataset"], "--output_dir", str(args.out / name),
               *spec["flags"]]
    if spec["context_names"]:
        command += ["--context_names", spec["context_names"]]
    if args.max_train_minutes:
        command += ["--max_train_minutes", str(args.max_train_minutes)]
    return command


def train_arm(name: str, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    command = train_command(name, spec, args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    summary = {"command": " ".join(command[command.index("--config_file"):]), "exit_code": code,
               "train_seconds": round(time.perf_counter() - start, 1)}
    lines = (folder / "train.log").read_text(errors="replace").splitlines()
    summary["log"] = [line for line in lines if "trained to step" in line or "max_train_minutes" in line
                      or "Error" in line][-4:]
    return summary


def sample_arm(folder: Path, settings: list[tuple[str, int, float | None]], num_per_context: int,
               device: str) -> dict[str, np.ndarray]:
    """Every setting's samples as one batch (num_per_context per context, in context order), same seed for all."""
    pipe = load_pipeline(str(folder), device=device)
    pipe.set_progress_bar_config(disable=True)
    count = len(pipe.context_names)
    requested = np.repeat(np.arange(count), num_per_context)
    weights = torch.eye(count, device=pipe.device)[torch.from_numpy(requested).to(pipe.device)]
    out = {"requested": requested}
    for sampler, steps, guidance in settings:
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        # One batch of every sprite: the app's 64-sprite limit is for requests, not for this loop.
        sample = None
        for step in pipe._reverse_process(weights, steps, sampler, True, 1.0, guidance or 1.0, generator):
            sample = step.sample
        out[run_key(sampler, steps, guidance)] = to_uint8(sample)
    return out


def run_key(sampler: str, steps: int, guidance: float | None) -> str:
    return f"{sampler}:{steps}:{guidance or 1:g}"


def score_arm(name: str, spec: dict[str, Any], samples: dict[str, np.ndarray],
              evaluators: dict[tuple, Evaluator]) -> list[dict[str, Any]]:
    names = spec["context_names"].split(",") if spec["context_names"] else None
    downscale = "area" if "area" in spec["flags"] else "palette"
    key = (spec["dataset"], downscale, spec["judge"])
    if key not in evaluators:
        data = load_dataset(spec["dataset"], context_names=names, downscale=downscale)
        evaluators[key] = Evaluator(data, spec["judge"], name=f"{Path(spec['dataset']).stem} ({downscale})")
    results = []
    for setting, images in samples.items():
        if setting == "requested":
            continue
        sampler, steps, guidance = setting.split(":")
        result = {"arm": name, "preset": spec["preset"], "flags": spec["flags"], "sampler": sampler,
                  "steps": int(steps), "guidance_scale": float(guidance),
                  **evaluators[key].score(images, samples["requested"])}
        result["bar_failures"] = quality_bar_failures(result)
        results.append(result)
    return results


def pack(study: dict[str, Any], out: Path, to: Path, model_budget_mb: float = 40.0,
         samples_budget_mb: float = 16.0) -> None:
    """What comes back from a lent machine, in few files: study.json, all samples, logs, and the pipelines
    of the best arms that fit model_budget_mb (tar parts of at most 15 MiB)."""
    to.mkdir(parents=True, exist_ok=True)
    (to / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    arrays = {}
    for name in study["arms"]:
        if (out / name / "samples.npz").is_file():
            with np.load(out / name / "samples.npz") as z:
                arrays.update({f"{name}/{k}": z[k] for k in z.files})
    np.savez_compressed(to / "samples.npz", **arrays)
    if (to / "samples.npz").stat().st_size > samples_budget_mb * 2**20:  # keep the first 40 per context
        keep = dict(arrays)
        for k in [k for k in arrays if k.endswith("/requested")]:
            arm_name, requested = k.split("/")[0], arrays[k]
            first = np.concatenate([np.flatnonzero(requested == c)[:40] for c in np.unique(requested)])
            for key in [x for x in arrays if x.startswith(arm_name + "/")]:
                keep[key] = arrays[key][first]
        np.savez_compressed(to / "samples.npz", **keep)
    with open(to / "logs.txt", "w") as logs:
        for name in study["arms"]:
            log = out / name / "train.log"
            if log.is_file():
                logs.write(f"==== {name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]) + "\n")
    # Rank: fewest bar failures in the arm's best setting, then precision relative to real.
    best: dict[str, tuple] = {}
    for r in study["results"]:
        rank = (len(r["bar_failures"]), -r.get("precision", 0) / max(r.get("precision_real", 1), 1e-9))
        best[r["arm"]] = min(best.get(r["arm"], rank), rank)
    buffer, used = io.BytesIO(), 0.0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(best, key=best.get):
            files = [f for f in (out / name).rglob("*") if f.is_file() and f.suffix in (".json", ".safetensors", ".md")
                     and "checkpoint" not in str(f)]
            size = sum(f.stat().st_size for f in files) / 2**20
            if used + size > model_budget_mb:
                continue
            used += size
            for f in files:
                tar.add(f, arcname=str(f.relative_to(out)))
    data, part = buffer.getvalue(), 15 * 2**20
    for i in range(0, len(data), part):
        (to / f"models.tar.{i // part}").write_bytes(data[i:i + part])


def steps_reached(info: dict[str, Any]) -> str:
    """'4750 of 6000' from an arm's train.log summary lines."""
    log = "\n".join(info.get("log", []))
    if box := re.search(r"reached at step (\d+) of (\d+)", log):
        return f"{box[1]} of {box[2]}"
    done = re.search(r"trained to step (\d+)", log)
    return done[1] if done else "?"


def study_table(studies: list[dict[str, Any]], setting: str) -> str:
    """One Markdown row per arm for one sampling setting ("ddpm:500:2"), each figure next to the real sprites'."""
    head = ["run", "arm", "parameters", "steps reached", "context accuracy (lowest)", "precision (real)",
            "recall (real)", "KID (real)", "background exact (real)", "colours per sprite (real)", "HF energy (real)",
            "memorisation", "misses of the bar"]
    rows = []
    for number, study in enumerate(studies, 1):
        for r in study["results"]:
            if f"{r['sampler']}:{r['steps']}:{r['guidance_scale']:g}" != setting:
                continue
            per_context = r["context_accuracy_per_context"]
            lowest = min(per_context, key=per_context.get)
            params = sum(p.numel() for p in build_unet(len(per_context), r["preset"]).parameters()) / 1e6
            rows.append([str(number), r["arm"], f"{params:.2f}M", steps_reached(study["arms"].get(r["arm"], {})),
                         f"{r['context_accuracy']:.3f} ({lowest} {per_context[lowest]:.2f})",
                         f"{r['precision']:.3f} ({r['precision_real']:.3f})",
                         f"{r['recall']:.3f} ({r['recall_real']:.3f})",
                         f"{r['kid']:.1f} ({r['kid_real']:.1f})",
                         f"{r['background_exact_share']:.2f} ({r['background_exact_share_real']:.2f})",
                         f"{r['colours_per_sprite']:.0f} ({r['colours_per_sprite_real']:.0f})",
                         f"{r['high_frequency_energy']:.2f} ({r['high_frequency_energy_real']:.2f})",
                         f"{r['memorisation_rate']:.1%}", str(len(r["bar_failures"]))])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--arms", nargs="+", default=None, help="arm names (default: all); see ARMS")
    parser.add_argument("--steps", type=int, default=4000, help="the budget: optimizer steps of batch 256")
    parser.add_argument("--max_train_minutes", type=float, default=None, help="each arm's time box (train.py)")
    parser.add_argument("--config", type=Path, default=ROOT / "training/configs/gpu_bf16.yaml",
                        help="accelerate config for every arm")
    parser.add_argument("--parallel", type=int, default=16, help="arms trained at once")
    parser.add_argument("--settings", nargs="+", type=parse_run, metavar="SAMPLER:STEPS:GUIDANCE",
                        default=[parse_run(s) for s in ("ddpm:500:2", "ddim:50:2", "ddim:25:2")])
    parser.add_argument("--num_per_context", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_training", action="store_true", help="sample and score existing arm folders")
    parser.add_argument("--pack", type=Path, default=None, help="also write the results in few files here")
    parser.add_argument("--table_from", type=Path, nargs="+", default=None, metavar="STUDY_JSON",
                        help="print the Markdown table of saved study.json files for each --settings, and stop")
    args = parser.parse_args(argv)
    if args.table_from:
        studies = [json.loads(path.read_text()) for path in args.table_from]
        for sampler, steps, guidance in args.settings:
            print(f"\n{sampler.upper()} {steps}, guidance {guidance or 1:g}\n")
            print(study_table(studies, run_key(sampler, steps, guidance)))
        return
    arms, extra = all_arms()
    chosen = args.arms or [a for a in arms if a not in extra]
    unknown = [a for a in chosen if a not in arms]
    if unknown:
        parser.exit(2, f"error: unknown arm(s) {unknown}; choose from {', '.join(arms)}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    study: dict[str, Any] = {"steps": args.steps, "recipe": RECIPE, "machine": machine_info(args.device),
                             "arms": {}, "results": []}
    started = time.perf_counter()

    def run(name: str) -> tuple[str, dict[str, Any]]:
        info = {} if args.skip_training else train_arm(name, arms[name], args)
        try:
            samples = sample_arm(args.out / name, args.settings, args.num_per_context, args.device)
            np.savez_compressed(args.out / name / "samples.npz", **samples)
        except Exception as err:  # one failed arm must not cost the others' results
            info["error"] = f"{type(err).__name__}: {err}"
        print(f"[{time.perf_counter() - started:.0f} s] {name}: {info}", flush=True)
        return name, info

    with ThreadPoolExecutor(args.parallel) as pool:
        study["arms"] = dict(pool.map(run, chosen))
    evaluators: dict[tuple, Evaluator] = {}
    for name in chosen:
        path = args.out / name / "samples.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    study["results"] += score_arm(name, arms[name], dict(z), evaluators)
            except Exception as err:  # e.g. no judge for a dataset: the samples still go into the pack
                study["arms"][name]["score_error"] = f"{type(err).__name__}: {err}"
    study["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    if args.pack:
        pack(study, args.out, args.pack)
    for r in study["results"]:
        print(f"{r['arm']:>22} {r['sampler']}:{r['steps']}:{r['guidance_scale']:g}  acc {r['context_accuracy']:.3f}"
              f"  fails {len(r['bar_failures'])}: {'; '.join(r['bar_failures'])[:160]}", flush=True)


if __name__ == "__main__":
    main()
