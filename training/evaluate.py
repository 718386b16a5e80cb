"""Score a sprite model with the dataset's judge (training/judge.py) and with pixel statistics: does it draw
what was asked, does it look like the real sprites to the judge and to eyes, and does it copy them?

    python -m training.evaluate --model model/default --dataset default --runs ddpm:500 ddim:50 ddim:25
    python -m training.evaluate --dataset default --samples run.npz --sheet sheet.png  # saved sprites

Each figure comes next to its real twin: context accuracy (the judge's verdict, next to its accuracy on
held-out real sprites); Fréchet distance, KID and improved precision and recall in judge features, against
real sprites the judge never saw (see :meth:`Evaluator.feature_figures`); pixel statistics that a judge
trained with noise augmentation barely feels (training/metrics.py); and memorisation, the share of samples
within ``MEMORISATION_THRESHOLD`` RMS of a training sprite or its mirror image, next to the same share for
each real sprite against all the others, which counts the near-duplicates the dataset itself holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model import MAX_IMAGES, SAMPLERS
from model.engine import OPENVINO_ENGINES
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
from training.metrics import (  # noqa: F401  (frechet_distance: re-exported, it used to live here)
    BACKGROUND_NEAR_LEVELS,
    COLOUR_GROUP_LEVELS,
    background_colour,
    frechet_distance,
    kernel_inception_distance,
    manifold_membership,
    nearest_distances,
    pixel_statistics,
    precision_recall,
)
from training.quality_bar import markdown_table, per_context_table, run_label

MEMORISATION_THRESHOLD = 10.0
MEMORISATION_UNIT = ("RMS difference of uint8 RGB values (0-255) at {size} px, to the nearest training sprite "
                     "or its mirror image")
HALVES_SEED = 1  # fixed: the real-vs-real reference must not change between runs
PR_NEIGHBOURS = 3  # k of the k-NN manifolds for precision and recall, as in Kynkäänniemi et al. 2019


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

    dataset: a dataset spec for ``training.sprite_data.load_dataset`` or an object with ``images``
    ((N, 3, R, R) in [-1, 1]), ``contexts`` ((N, C)) and ``context_names`` (e.g. a SpriteDataset).
    """

    def __init__(self, dataset: Any = "default", judge_dir: str | Path | None = None, *, resolution: int = 16,
                 memorisation_threshold: float = MEMORISATION_THRESHOLD, name: str | None = None):
        if isinstance(dataset, str | Path):
            from training.sprite_data import load_dataset

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
        # are unseen, so the real halves for FD, KID, precision and recall both come from its held-out sprites.
        half_a, half_b = stratified_split(self.labels[heldout], 0.5, HALVES_SEED)
        self.half_a, self.half_b = heldout[half_a], heldout[half_b]
        near = nearest_distances(self.real)
        self.memorisation_reference = float((near <= self.memorisation_threshold).mean())
        self._reference_cache: dict[tuple, dict[str, float]] = {}
        self.background = background_colour(self.real)
        self.real_pixels = pixel_statistics(self.real, self.background)  # every real sprite, once
        self.real_pixels_per_context = {name: pixel_statistics(self.real[self.labels == c], self.background)
                                        for c, name in enumerate(self.names) if (self.labels == c).any()}
        self.last_samples: tuple[np.ndarray, np.ndarray] | None = None  # (sprites, requested) of the latest run

    # ---- the figures -------------------------------------------------------------------
    def feature_figures(self, features: np.ndarray, requested: np.ndarray) -> dict[str, Any]:
        """FD, KID, precision and recall of samples vs real half B, and of real half A vs half B, on equal footing.

        Halves A and B split the judge's held-out sprites: like the samples, the judge never saw
        them. Both sets compared with half B hold the same number of sprites per context,
        k_c = min(samples of c, half-A sprites of c) (seeded subsets), so the sample-size effects
        on FD, precision and recall are the same on both sides. Contexts weigh equally in FD (weights
        1/k_c, and 1/|B_c| in half B) and in precision and recall (shares weighted the same way),
        matching the balanced samples whatever the dataset's class sizes; KID is unweighted (it is
        unbiased, and both sides have the same class mix).
        """
        in_both = np.intersect1d(self.labels[self.half_a], self.labels[self.half_b])
        classes = np.intersect1d(requested, in_both)
        keep_b = self.half_b[np.isin(self.labels[self.half_b], classes)]
        weights_b = 1.0 / np.bincount(self.labels[keep_b])[self.labels[keep_b]]
        k = {c: min(int((requested == c).sum()), int((self.labels[self.half_a] == c).sum())) for c in classes}
        if sum(k.values()) <= PR_NEIGHBOURS:
            raise ValueError(f"precision and recall need more than {PR_NEIGHBOURS} samples in contexts that the "
                             f"judge's held-out sprites hold, got {sum(k.values())}")
        rng = np.random.default_rng(HALVES_SEED)
        sel_gen = np.concatenate([rng.choice(np.flatnonzero(requested == c), k[c], replace=False) for c in classes])
        weights_gen = np.array([1.0 / k[c] for c in requested[sel_gen]])
        generated = self._against_half_b(features[sel_gen], weights_gen, keep_b, weights_b)
        key = tuple(sorted(k.items()))
        if key not in self._reference_cache:
            rng = np.random.default_rng(HALVES_SEED + 1)
            sel_a = np.concatenate([rng.choice(self.half_a[self.labels[self.half_a] == c], k[c], replace=False)
                                    for c in classes])
            weights_a = np.array([1.0 / k[c] for c in self.labels[sel_a]])
            self._reference_cache[key] = self._against_half_b(self.real_features[sel_a], weights_a, keep_b, weights_b)
        reference = self._reference_cache[key]
        fd, fd_real = generated["frechet_distance"], reference["frechet_distance"]
        return {"frechet_distance": fd, "frechet_real_vs_real": fd_real,
                "frechet_ratio": fd / fd_real if fd_real > 0 else float("inf"),
                "frechet_samples": int(len(sel_gen)), "frechet_real_samples": int(len(keep_b)),
                **{name: generated[name] for name in ("precision", "recall", "kid")},
                **{f"{name}_real": reference[name] for name in ("precision", "recall", "kid")}}

    def per_context_figures(self, samples: np.ndarray, features: np.ndarray,
                            requested: np.ndarray) -> dict[str, dict[str, float]]:
        """Each context's precision and recall against that context's real half B, and its pixel statistics,
        each next to its real twin, so that a weak context shows without a sheet.

        Like :meth:`feature_figures`, but within one context: k = min(samples, half-A sprites) of each side
        (seeded subsets) meet the same half B, so a small context such as food (16 sprites per half) is
        judged on equal footing with its own real sprites, noisily but fairly. Contexts with k or half B
        not above PR_NEIGHBOURS get pixel statistics only.
        """
        rng = np.random.default_rng(HALVES_SEED)
        rows = {}
        for c, name in enumerate(self.names):
            mine = np.flatnonzero(requested == c)
            if not len(mine) or name not in self.real_pixels_per_context:
                continue
            row = {**pixel_statistics(samples[mine], self.background), "samples": int(len(mine)),
                   **{f"{stat}_real": value for stat, value in self.real_pixels_per_context[name].items()}}
            half_a = self.half_a[self.labels[self.half_a] == c]
            reference = self.real_features[self.half_b[self.labels[self.half_b] == c]]
            k = min(len(mine), len(half_a))
            if k > PR_NEIGHBOURS and len(reference) > PR_NEIGHBOURS:
                for suffix, chosen in (("", features[rng.choice(mine, k, replace=False)]),
                                       ("_real", self.real_features[rng.choice(half_a, k, replace=False)])):
                    pr = precision_recall(reference, chosen, PR_NEIGHBOURS)
                    row[f"precision{suffix}"], row[f"recall{suffix}"] = pr
            rows[name] = row
        return rows

    def _against_half_b(self, features: np.ndarray, weights: np.ndarray, keep_b: np.ndarray,
                        weights_b: np.ndarray) -> dict[str, float]:
        reference = self.real_features[keep_b]
        in_real = manifold_membership(reference, features, PR_NEIGHBOURS)
        in_generated = manifold_membership(features, reference, PR_NEIGHBOURS)
        return {"frechet_distance": frechet_distance(features, reference, weights, weights_b),
                "precision": float(np.average(in_real, weights=weights)),
                "recall": float(np.average(in_generated, weights=weights_b)),
                "kid": kernel_inception_distance(features, reference)}

    def score(self, samples: np.ndarray | torch.Tensor, requested: np.ndarray) -> dict[str, Any]:
        """Every figure for samples ((N, R, R, 3) uint8, or (N, 3, R, R) in [-1, 1]) asked to be context `requested`."""
        samples = to_uint8_images(samples)
        requested = np.asarray(requested, dtype=np.int64)
        if samples.ndim != 4 or samples.shape[1:] != self.real.shape[1:]:
            raise ValueError(f"samples of shape {samples.shape[1:]} do not match dataset {self.name!r}'s sprites "
                             f"of {self.real.shape[1:]} (height, width, RGB)")
        if (requested.ndim != 1 or len(requested) != len(samples) or not len(samples) or requested.min() < 0
                or requested.max() >= len(self.names)):
            raise ValueError(f"requested must hold one context index (0..{len(self.names) - 1}) per sample")
        pred, features = judge_outputs(self.judge, samples)
        per_context = per_class_accuracy(pred, requested, self.names)
        near = nearest_distances(samples, self.real)
        pixels = pixel_statistics(samples, self.background)
        return {
            "context_accuracy": float(np.mean(list(per_context.values()))),
            "context_accuracy_per_context": per_context,
            "judge_heldout_accuracy": float(np.mean(list(self.heldout_accuracy.values()))),
            "judge_heldout_accuracy_per_context": self.heldout_accuracy,
            **self.feature_figures(features, requested),
            **pixels, **{f"{name}_real": value for name, value in self.real_pixels.items()},
            "per_context": self.per_context_figures(samples, features, requested),
            "background_colour": list(self.background),
            "memorisation_rate": float((near <= self.memorisation_threshold).mean()),
            "memorisation_threshold": self.memorisation_threshold,
            "memorisation_threshold_unit": MEMORISATION_UNIT.format(size=self.real.shape[1]),
            "memorisation_real_reference": self.memorisation_reference,
            "nearest_distance_median": float(np.median(near)),
        }

    def score_file(self, path: str | Path) -> dict[str, Any]:
        """Score a saved run (see :func:`load_samples`); its metadata goes into the result, None where missing."""
        images, requested, metadata = load_samples(path)
        self.last_samples = (images, requested.astype(np.int64))
        try:
            scores = self.score(*self.last_samples)
        except ValueError as err:  # say which file, when there are several
            raise ValueError(f"{path}: {err}") from None
        return {"model": metadata.pop("model"), "dataset": self.name, **metadata, "samples": str(path),
                "num_per_context": int(np.bincount(requested, minlength=len(self.names)).min()), "seed": None,
                **scores, "seconds": None, "machine": machine_info()}

    def run(self, pipe, num_per_context: int = 200, sampler: str = "ddpm", num_inference_steps: int = 500,
            guidance_scale: float = 1.0, seed: int = 0, batch_size: int = MAX_IMAGES,
            model_name: str | None = None, cache_interval: int = 1, two_pass_guidance: bool = False
            ) -> dict[str, Any]:
        """Generate num_per_context sprites for each context with `pipe`, then score them (cache_interval and
        two_pass_guidance as in SpritePipeline.__call__).

        The sprites stay in ``self.last_samples`` for a comparison sheet, so they need not be drawn twice.
        """
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
                               guidance_scale=guidance_scale, generator=generator, cache_interval=cache_interval,
                               two_pass_guidance=two_pass_guidance, callback=lambda *_: bar.update()).array
                          for i in batches]
        finally:
            pipe.set_progress_bar_config(**old_bar)
        self.last_samples = (to_uint8_images(np.concatenate(arrays)), requested)
        scores = self.score(*self.last_samples)
        return {"model": model_name or pipe.name_or_path or type(pipe).__name__, "dataset": self.name,
                "sampler": sampler, "steps": num_inference_steps, "guidance_scale": guidance_scale,
                "guidance_passes": pipe.unet_rows(1, guidance_scale, two_pass_guidance),
                "cache_interval": cache_interval, "num_per_context": num_per_context, "seed": seed, **scores,
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


SAMPLE_METADATA = ("sampler", "steps", "guidance_scale", "model")


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A saved run: `images` (N, R, R, 3) uint8, `requested` (N,) context indices, and the optional scalars
    SAMPLE_METADATA (None when missing). Raises ValueError with a readable message for anything else."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays")
        with data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz of saved samples: {err}") from None
    missing = [name for name in ("images", "requested") if name not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {' and '.join(missing)}; it holds {sorted(arrays) or 'nothing'}")
    images, requested = arrays["images"], arrays["requested"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: images must be (N, R, R, 3) uint8, got {images.dtype} of shape {images.shape}")
    if not np.issubdtype(requested.dtype, np.integer) or requested.shape != (len(images),):
        raise ValueError(f"{path}: requested must be ({len(images)},) integer context indices, "
                         f"got {requested.dtype} of shape {requested.shape}")
    not_scalar = [name for name in SAMPLE_METADATA if name in arrays and arrays[name].ndim != 0]
    if not_scalar:
        raise ValueError(f"{path}: {', '.join(not_scalar)} must be scalars")
    return images, requested, {name: arrays[name].item() if name in arrays else None for name in SAMPLE_METADATA}


def main(argv: list[str] | None = None) -> None:
    from model import ModelLoadError, load_pipeline
    from training.sample_grid import SHEET_SCALE, comparison_sheet, save_comparison_sheet
    from training.sprite_data import DatasetError, add_dataset_args, dataset_from_args

    parser = argparse.ArgumentParser(description="Evaluate a sprite model with the dataset's judge; prints JSON.")
    parser.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--revision", default=None, help="Hub revision of --model")
    parser.add_argument("--device", default=None, help="torch device for sampling, e.g. cuda")
    add_dataset_args(parser)
    parser.set_defaults(resolution=None)  # default: the model's (or the saved samples') resolution
    parser.add_argument("--judge", default=None, help="judge folder (default: training/judges/<dataset>)")
    parser.add_argument("--num_per_context", type=int, default=200)
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--guidance_scale", type=float, default=1.0)
    parser.add_argument("--runs", nargs="+", type=parse_run, default=None, metavar="SAMPLER:STEPS[:GUIDANCE]",
                        help="several runs in one call, e.g. ddpm:500 ddim:50 ddim:25 ddim:50:3; prints a list")
    parser.add_argument("--samples", nargs="+", type=Path, default=None, metavar="NPZ",
                        help="score saved sprites instead of sampling (no --model is loaded); prints a list. Each "
                             ".npz holds images (N, R, R, 3) uint8, requested (N,) context indices and optionally "
                             "the scalars " + ", ".join(SAMPLE_METADATA))
    parser.add_argument("--sheet", type=Path, default=None, metavar="PATH",
                        help=f"write a PNG of real | generated sprites per context for the first run ({SHEET_SCALE}x)")
    parser.add_argument("--sheet_focus", default=None, metavar="CONTEXT",
                        help="in the sheet, four rows of this context (e.g. food) instead of one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_interval", type=int, default=1,
                        help="the whole U-Net every this many steps, its outer blocks in between (DeepCache)")
    parser.add_argument("--two_pass_guidance", action="store_true",
                        help="a guidance-distilled model's guidance in the course's two passes instead of one")
    parser.add_argument("--compile", action="store_true",
                        help="sample with torch.compile (about a minute to compile; worth it for DDPM 500)")
    parser.add_argument("--engine", choices=["torch", *OPENVINO_ENGINES], default="torch",
                        help="what runs the U-Net: torch (eager, or compiled with --compile) or OpenVINO in fp32, bf16 "
                             "or int8 (model/engine.py; pip install openvino, and nncf for int8)")
    parser.add_argument("--batch_size", type=int, default=MAX_IMAGES)
    parser.add_argument("--memorisation_threshold", type=float, default=MEMORISATION_THRESHOLD)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--table_from", type=Path, default=None,
                        help="print the Markdown results tables of a saved --json file, and nothing else")
    args = parser.parse_args(argv)
    if args.table_from:
        try:
            saved = json.loads(args.table_from.read_text())
            saved = saved if isinstance(saved, list) else [saved]
            print(markdown_table(saved))
            for result in saved:
                if "per_context" in result:
                    print(f"\n{run_label(result)}, per context:\n\n{per_context_table(result)}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            parser.exit(2, f"error: no results table from {args.table_from} (made by an older evaluate.py?): "
                           f"{type(err).__name__}: {err}\n")
        return
    if args.samples and (args.model or args.runs):
        parser.error("--samples scores saved sprites; --model and --runs do not apply to it")
    try:
        if args.samples:
            args.resolution = args.resolution or load_samples(args.samples[0])[0].shape[1]
        else:
            pipe = load_pipeline(args.model, revision=args.revision, device=args.device)
            if args.compile:
                pipe.enable_fast_sampling(batch_sizes=(args.batch_size, 2 * args.batch_size))
            if args.engine != "torch":
                try:
                    pipe.use_engine(args.engine)
                except ValueError as err:
                    raise ValueError(f"--engine {args.engine}: {err}") from None
            args.resolution = pipe.unet.config.sample_size if args.resolution is None else args.resolution
        data = dataset_from_args(args)
        evaluator = Evaluator(data, args.judge or default_judge_dir(args.dataset), name=args.dataset,
                              memorisation_threshold=args.memorisation_threshold)
        if args.sheet_focus and args.sheet_focus not in evaluator.names:
            raise ValueError(f"--sheet_focus {args.sheet_focus!r} is not a context: {', '.join(evaluator.names)}")
        results = []
        for job in args.samples or args.runs or [(args.sampler, args.steps, None)]:
            if args.samples:
                results.append(evaluator.score_file(job))
            else:
                sampler, steps, guidance = job
                results.append(evaluator.run(pipe, args.num_per_context, sampler, steps,
                                             args.guidance_scale if guidance is None else guidance, args.seed,
                                             args.batch_size, model_name=(args.model or "bundled default") + (
                                                 "" if args.engine == "torch" else f", {args.engine}"),
                                             cache_interval=args.cache_interval,
                                             two_pass_guidance=args.two_pass_guidance))
            print(f"{run_label(results[-1])}, per context (real sprites in brackets):\n"
                  f"{per_context_table(results[-1])}", file=sys.stderr)
            if args.sheet and len(results) == 1:
                focus = evaluator.names.index(args.sheet_focus) if args.sheet_focus else None
                save_comparison_sheet(comparison_sheet(evaluator, *evaluator.last_samples, focus=focus), args.sheet)
        text = json.dumps(results if args.runs or args.samples else results[0], indent=2)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
    except (ModelLoadError, DatasetError, JudgeError, ValueError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    print(text)


if __name__ == "__main__":
    main()
