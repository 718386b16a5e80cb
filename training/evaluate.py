"""Score a sprite model with the dataset's judge (training/judge.py): does it draw what was asked,
does it look like the real sprites, and does it copy them?

    python -m training.evaluate --model model/default --dataset default --runs ddpm:500 ddim:50 ddim:25

For N samples per context (one-hot contexts, equal counts) it reports:
- context accuracy: the share of samples the judge assigns to the requested context, overall (the mean
  over contexts) and per context, next to the judge's own accuracy on its held-out real sprites
  (averaged over contexts the same way);
- Fréchet distance between judge features (penultimate layer) of samples and real sprites, next to the
  same distance between two disjoint halves of the real sprites the judge never trained on (see
  :meth:`Evaluator.frechet`);
- memorisation: the share of samples within ``MEMORISATION_THRESHOLD`` RMS (uint8 values) of a
  training sprite or its mirror image, next to the same share for each real sprite against all the
  others (leave-one-out), which counts the near-duplicates the dataset itself holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model import MAX_IMAGES, SAMPLERS
from training.judge import (
    JUDGES_DIR,
    JudgeError,
    class_labels,
    fingerprint,
    judge_outputs,
    load_judge,
    per_class_accuracy,
    stratified_split,
    to_uint8_images,
)

MEMORISATION_THRESHOLD = 10.0
MEMORISATION_UNIT = ("RMS difference of uint8 RGB values (0-255) at {size} px, to the nearest training sprite "
                     "or its mirror image")
HALVES_SEED = 1  # fixed: the real-vs-real reference must not change between runs


def frechet_distance(a: np.ndarray, b: np.ndarray, weights_a: np.ndarray | None = None,
                     weights_b: np.ndarray | None = None) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of (weighted) Gaussian fits, float64.

    The matrix root goes through symmetric eigendecompositions, which stay real and stable for the
    rank-deficient covariances of small sample sets.
    """
    (mu_a, s_a), (mu_b, s_b) = _weighted_stats(a, weights_a), _weighted_stats(b, weights_b)
    vals, vecs = np.linalg.eigh(s_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(value, 0.0))


def _weighted_stats(x: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and (reliability-weights unbiased) covariance."""
    x = np.asarray(x, dtype=np.float64)
    w = np.full(len(x), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu = w @ x
    centred = x - mu
    return mu, (centred * w[:, None]).T @ centred / max(1.0 - (w**2).sum(), 1e-12)


def nearest_distances(samples: np.ndarray, reference: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """RMS distance (uint8 units) from each (N, H, W, 3) sample to its nearest reference sprite or mirror image.

    Mirror images count because training flips sprites: a flipped copy is still a copy.
    reference=None: leave-one-out within `samples` (each one's own copy and mirror are skipped).
    """
    leave_one_out = reference is None
    reference = samples if leave_one_out else reference
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples of shape {samples.shape[1:]} cannot be compared with sprites of "
                         f"{reference.shape[1:]}")
    ref = np.concatenate([reference, reference[:, :, ::-1]]).reshape(2 * len(reference), -1)
    ref = torch.from_numpy(ref).double()
    out = []
    for start in range(0, len(samples), chunk):
        s = torch.from_numpy(samples[start:start + chunk].reshape(-1, ref.shape[1])).double()
        d = torch.cdist(s, ref)
        if leave_one_out:
            rows = torch.arange(len(s))
            d[rows, start + rows] = d[rows, len(reference) + start + rows] = float("inf")
        out.append(d.min(1).values)
    return (torch.cat(out) / ref.shape[1] ** 0.5).numpy()


def default_judge_dir(dataset: str) -> Path:
    folder = JUDGES_DIR / str(dataset)
    if not (folder / "config.json").is_file():
        raise JudgeError(f"no judge for dataset {dataset!r} in {JUDGES_DIR}: train one with "
                         f"python -m training.judge --dataset {dataset} --output DIR and pass it as judge_dir/--judge")
    return folder


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where the figures (and above all the seconds) were measured."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    info = {"platform": platform.platform(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "device": str(device) if device is not None else "cpu"}
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


class Evaluator:
    """The real-data side (judge, splits, features, references), computed once for any number of runs.

    dataset: a dataset spec for ``training.datasets.load_dataset`` or an object with ``images``
    ((N, 3, R, R) in [-1, 1]), ``contexts`` ((N, C)) and ``context_names`` (e.g. a SpriteDataset).
    """

    def __init__(self, dataset: Any = "default", judge_dir: str | Path | None = None, *, resolution: int = 16,
                 memorisation_threshold: float = MEMORISATION_THRESHOLD, name: str | None = None):
        if isinstance(dataset, str | Path):
            from training.datasets import load_dataset

            name = name or str(dataset)
            judge_dir = judge_dir or default_judge_dir(str(dataset))
            dataset = load_dataset(str(dataset), resolution=resolution)
        elif judge_dir is None:
            raise JudgeError("judge_dir is needed when the dataset is given as an object")
        self.name = name or type(dataset).__name__
        self.names = list(dataset.context_names)
        self.judge, self.judge_config = load_judge(judge_dir)
        judged = list(self.judge_config["context_names"])
        if judged != self.names:
            raise JudgeError(f"judge for contexts {judged} cannot judge dataset {self.name!r} "
                             f"with contexts {self.names}")
        self.real = to_uint8_images(dataset.images)
        self.labels = class_labels(dataset.contexts)
        if fingerprint(self.real, self.labels) != self.judge_config.get("dataset_fingerprint"):
            raise JudgeError(f"judge in {judge_dir} was trained on other sprites than dataset {self.name!r} holds "
                             f"now, so its held-out split is void; retrain it with python -m training.judge")
        self.memorisation_threshold = float(memorisation_threshold)
        self.real_pred, self.real_features = judge_outputs(self.judge, self.real)

        self.train_idx, self.heldout_idx = stratified_split(
            self.labels, self.judge_config["heldout_fraction"], self.judge_config["split_seed"])
        heldout = self.heldout_idx
        self.heldout_accuracy = per_class_accuracy(self.real_pred[heldout], self.labels[heldout], self.names)
        # The judge's features of sprites it trained on are tighter than of unseen ones, and samples
        # are unseen, so the real halves for FD both come from its held-out sprites.
        half_a, half_b = stratified_split(self.labels[heldout], 0.5, HALVES_SEED)
        self.half_a, self.half_b = heldout[half_a], heldout[half_b]
        near = nearest_distances(self.real)
        self.memorisation_reference = float((near <= self.memorisation_threshold).mean())
        self._reference_cache: dict[tuple, float] = {}

    # ---- the figures -------------------------------------------------------------------
    def frechet(self, features: np.ndarray, requested: np.ndarray) -> dict[str, Any]:
        """FD of samples vs real half B, and of real half A vs half B, on equal footing.

        Halves A and B split the judge's held-out sprites: like the samples, the judge never saw
        them. Both sets compared with half B hold the same number of sprites per context,
        k_c = min(samples of c, half-A sprites of c) (seeded subsets), so the sample-size bias
        of FD is the same on both sides. Contexts weigh equally (weights 1/k_c, and 1/|B_c| in
        half B), matching the balanced samples whatever the dataset's class sizes.
        """
        in_both = np.intersect1d(self.labels[self.half_a], self.labels[self.half_b])
        classes = np.intersect1d(requested, in_both)
        keep_b = self.half_b[np.isin(self.labels[self.half_b], classes)]
        weights_b = 1.0 / np.bincount(self.labels[keep_b])[self.labels[keep_b]]
        k = {c: min(int((requested == c).sum()), int((self.labels[self.half_a] == c).sum())) for c in classes}
        rng = np.random.default_rng(HALVES_SEED)
        sel_gen = np.concatenate([rng.choice(np.flatnonzero(requested == c), k[c], replace=False) for c in classes])
        weights_gen = np.array([1.0 / k[c] for c in requested[sel_gen]])
        fd = frechet_distance(features[sel_gen], self.real_features[keep_b], weights_gen, weights_b)
        key = tuple(sorted(k.items()))
        if key not in self._reference_cache:
            rng = np.random.default_rng(HALVES_SEED + 1)
            sel_a = np.concatenate([rng.choice(self.half_a[self.labels[self.half_a] == c], k[c], replace=False)
                                    for c in classes])
            weights_a = np.array([1.0 / k[c] for c in self.labels[sel_a]])
            self._reference_cache[key] = frechet_distance(self.real_features[sel_a], self.real_features[keep_b],
                                                          weights_a, weights_b)
        reference = self._reference_cache[key]
        return {"frechet_distance": fd, "frechet_real_vs_real": reference,
                "frechet_ratio": fd / reference if reference > 0 else float("inf"),
                "frechet_samples": int(len(sel_gen)), "frechet_real_samples": int(len(keep_b))}

    def score(self, samples: np.ndarray | torch.Tensor, requested: np.ndarray) -> dict[str, Any]:
        """Every figure for samples ((N, R, R, 3) uint8, or (N, 3, R, R) in [-1, 1]) asked to be context `requested`."""
        samples = to_uint8_images(samples)
        requested = np.asarray(requested, dtype=np.int64)
        if samples.shape[1:] != self.real.shape[1:]:
            raise ValueError(f"samples are {samples.shape[1]}x{samples.shape[2]} px but dataset {self.name!r} "
                             f"is {self.real.shape[1]}x{self.real.shape[2]} px")
        if len(requested) != len(samples) or requested.min() < 0 or requested.max() >= len(self.names):
            raise ValueError(f"requested must hold one context index (0..{len(self.names) - 1}) per sample")
        pred, features = judge_outputs(self.judge, samples)
        per_context = per_class_accuracy(pred, requested, self.names)
        near = nearest_distances(samples, self.real)
        return {
            "context_accuracy": float(np.mean(list(per_context.values()))),
            "context_accuracy_per_context": per_context,
            "judge_heldout_accuracy": float(np.mean(list(self.heldout_accuracy.values()))),
            "judge_heldout_accuracy_per_context": self.heldout_accuracy,
            **self.frechet(features, requested),
            "memorisation_rate": float((near <= self.memorisation_threshold).mean()),
            "memorisation_threshold": self.memorisation_threshold,
            "memorisation_threshold_unit": MEMORISATION_UNIT.format(size=self.real.shape[1]),
            "memorisation_real_reference": self.memorisation_reference,
            "nearest_distance_median": float(np.median(near)),
        }

    def run(self, pipe, num_per_context: int = 200, sampler: str = "ddpm", num_inference_steps: int = 500,
            guidance_scale: float = 1.0, seed: int = 0, batch_size: int = MAX_IMAGES,
            model_name: str | None = None) -> dict[str, Any]:
        """Generate num_per_context sprites for each context with `pipe`, then score them."""
        if list(pipe.context_names) != self.names:
            raise JudgeError(f"judge for contexts {self.names} cannot judge a model with contexts "
                             f"{list(pipe.context_names)}")
        if pipe.unet.config.sample_size != self.real.shape[1]:
            raise JudgeError(f"the model makes {pipe.unet.config.sample_size} px sprites but dataset {self.name!r} "
                             f"is {self.real.shape[1]} px")
        if not isinstance(num_per_context, int) or num_per_context < 1:
            raise ValueError(f"num_per_context must be a whole number of at least 1, got {num_per_context!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_IMAGES:
            raise ValueError(f"batch_size must be a whole number from 1 to {MAX_IMAGES}, got {batch_size!r}")
        pipe.check_inputs(1, num_inference_steps, sampler, guidance_scale, 1.0)
        requested = np.repeat(np.arange(len(self.names)), num_per_context)
        contexts = np.eye(len(self.names), dtype=np.float32)[requested]
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        batches = range(0, len(requested), batch_size)
        old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
        pipe.set_progress_bar_config(disable=True)  # one bar over every batch instead of one per batch
        try:
            with tqdm(total=len(batches) * num_inference_steps, unit="step", file=sys.stderr,
                      desc=f"{sampler} {num_inference_steps} steps, {len(requested)} sprites") as bar:
                arrays = [pipe(context=contexts[i:i + batch_size], num_images=len(contexts[i:i + batch_size]),
                               num_inference_steps=num_inference_steps, sampler=sampler,
                               guidance_scale=guidance_scale, generator=generator,
                               callback=lambda *_: bar.update()).array for i in batches]
        finally:
            pipe.set_progress_bar_config(**old_bar)
        scores = self.score(np.concatenate(arrays), requested)
        return {"model": model_name or pipe.name_or_path or type(pipe).__name__, "dataset": self.name,
                "sampler": sampler, "steps": num_inference_steps, "guidance_scale": guidance_scale,
                "num_per_context": num_per_context, "seed": seed, **scores,
                "seconds": round(time.perf_counter() - start, 2), "machine": machine_info(pipe.device)}


def evaluate_pipeline(pipe, dataset: Any = "default", num_per_context: int = 200, sampler: str = "ddpm",
                      num_inference_steps: int = 500, guidance_scale: float = 1.0, seed: int = 0,
                      batch_size: int = MAX_IMAGES, judge_dir: str | Path | None = None) -> dict[str, Any]:
    """One evaluation run; see :class:`Evaluator` to reuse the real-data side across runs."""
    evaluator = Evaluator(dataset, judge_dir, resolution=pipe.unet.config.sample_size)
    return evaluator.run(pipe, num_per_context, sampler, num_inference_steps, guidance_scale, seed, batch_size)


def parse_run(spec: str) -> tuple[str, int, float | None]:
    """'ddim:50' or 'ddpm:500:3' (guidance scale) -> (sampler, steps, guidance or None)."""
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3) or parts[0] not in SAMPLERS:
            raise ValueError
        return parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"run {spec!r} is not SAMPLER:STEPS[:GUIDANCE] "
                                         f"with SAMPLER one of {', '.join(SAMPLERS)}, e.g. ddim:50") from None


def quality_bar_failures(result: dict[str, Any], lowest_context: float = 0.75, max_frechet_ratio: float = 5.0,
                         max_memorisation: float = 0.10) -> list[str]:
    """What a run misses of the quality bar (README, "The quality bar"); empty when it passes."""
    failures = []
    if result["context_accuracy"] < result["judge_heldout_accuracy"]:
        failures.append(f"context accuracy {result['context_accuracy']:.3f} < the judge's "
                        f"{result['judge_heldout_accuracy']:.3f} on real sprites")
    failures += [f"{name} accuracy {value:.3f} < {lowest_context}"
                 for name, value in result["context_accuracy_per_context"].items() if value < lowest_context]
    if result["frechet_ratio"] > max_frechet_ratio:
        failures.append(f"Fréchet ratio {result['frechet_ratio']:.1f}x > {max_frechet_ratio:g}x")
    if result["memorisation_rate"] > max_memorisation:
        failures.append(f"memorisation {result['memorisation_rate']:.1%} > {max_memorisation:.0%}")
    return failures


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The README's results table: one row per run, the judge's own figures on real sprites first."""
    first = results[0]
    names = list(first["context_accuracy_per_context"])
    header = ["run", "context accuracy", *names, "Fréchet distance (ratio)", "memorisation", "seconds"]
    real = ["real held-out sprites (judge)", f"{first['judge_heldout_accuracy']:.3f}",
            *(f"{first['judge_heldout_accuracy_per_context'][n]:.3f}" for n in names),
            f"{first['frechet_real_vs_real']:.2f} (1.0)", f"{first['memorisation_real_reference']:.1%}", ""]
    rows = [real]
    for r in results:
        run = f"{r['sampler'].upper()} {r['steps']}" + (f", guidance {r['guidance_scale']:g}"
                                                        if r["guidance_scale"] != 1 else "")
        per_context = (f"{r['context_accuracy_per_context'][n]:.3f}" for n in names)
        rows.append([run, f"{r['context_accuracy']:.3f}", *per_context,
                     f"{r['frechet_distance']:.2f} ({r['frechet_ratio']:.1f}x)", f"{r['memorisation_rate']:.1%}",
                     f"{r['seconds']:.0f}"])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    from model import ModelLoadError, load_pipeline
    from training.datasets import DatasetError, add_dataset_args, dataset_from_args

    parser = argparse.ArgumentParser(description="Evaluate a sprite model with the dataset's judge; prints JSON.")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--device", default=None, help="torch device for sampling, e.g. cuda")
    add_dataset_args(parser)
    parser.set_defaults(resolution=None)  # default: the model's resolution
    parser.add_argument("--judge", default=None, help="judge folder (default: training/judges/<dataset>)")
    parser.add_argument("--num_per_context", type=int, default=200)
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--guidance_scale", type=float, default=1.0)
    parser.add_argument("--runs", nargs="+", type=parse_run, default=None, metavar="SAMPLER:STEPS[:GUIDANCE]",
                        help="several runs in one call, e.g. ddpm:500 ddim:50 ddim:25 ddim:50:3; prints a list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=MAX_IMAGES)
    parser.add_argument("--memorisation_threshold", type=float, default=MEMORISATION_THRESHOLD)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--table_from", type=Path, default=None,
                        help="print the Markdown results table of a saved --json file, and nothing else")
    args = parser.parse_args(argv)
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(markdown_table(saved if isinstance(saved, list) else [saved]))
        return
    try:
        pipe = load_pipeline(args.model, revision=args.revision, device=args.device)
        args.resolution = pipe.unet.config.sample_size if args.resolution is None else args.resolution
        data = dataset_from_args(args)
        evaluator = Evaluator(data, args.judge or default_judge_dir(args.dataset), name=args.dataset,
                              memorisation_threshold=args.memorisation_threshold)
        runs = args.runs or [(args.sampler, args.steps, None)]
        results = [evaluator.run(pipe, args.num_per_context, sampler, steps,
                                 args.guidance_scale if guidance is None else guidance, args.seed,
                                 args.batch_size, model_name=args.model or "bundled default")
                   for sampler, steps, guidance in runs]
    except (ModelLoadError, DatasetError, JudgeError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    text = json.dumps(results if args.runs else results[0], indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
