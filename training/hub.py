"""The model card and the push to the Hugging Face Hub.

The push sends only the pipeline (model_index.json, unet/, scheduler/), the card with its figures, the sample
grid and the evaluation files; checkpoints and logs stay local. It also works on its own, to retry a failed
push without retraining::

    python -m training.hub runs/sprites --hub_model_id you/sprite-diffusion
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token

from training import plots

FIGURES = ("loss.png", "samples_over_training.png")  # drawn by write_model_card from the run's history and grids
UPLOAD_PATTERNS = ["model_index.json", "unet/*", "scheduler/*", "README.md", "samples.png", "sheet.png", "eval/*",
                   "training_args.json", *FIGURES]
DEFAULT_DATASET_NOTE = ("the bundled Dungeon Crawl Stone Soup sprites (`data/sprites_dcss.npz`; tiles by the "
                        "Dungeon Crawl Stone Soup team and RLTiles contributors, GPL-2+, most of them CC0)")
TAGS = ["diffusers", "ddpm", "pixel-art", "sprites", "class-conditional", "sprite-diffusion"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class PushError(RuntimeError):
    """The push failed; the message says why and never contains the token."""


def redact(text: str, token: str | None = None) -> str:
    """Remove the token (given or found by huggingface_hub) from a message."""
    for secret in {token, get_token()}:
        if secret:
            text = text.replace(secret, "***")
    return text


def push_folder(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "Upload sprite diffusion model") -> str:
    """create_repo + upload_folder; returns the full repo id. Raises PushError with the reason."""
    try:
        api = HfApi(token=token)  # made per call: it reads the Hub's address (HF_ENDPOINT) now, not at import
        repo = api.create_repo(repo_id, private=private or None, exist_ok=True)
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), allow_patterns=UPLOAD_PATTERNS,
                          commit_message=commit_message)
    except Exception as err:  # HTTP errors, connection errors, bad repo ids: the reason is what matters
        reason = " ".join(str(err).split())[:600] or type(err).__name__
        raise PushError(f"push to Hub repo {repo_id!r} failed: {redact(reason, token)}") from None
    return repo.repo_id


# ---- model card ----------------------------------------------------------------------------


def _dataset(spec: str) -> tuple[str, list[str] | None]:
    """How the card names the dataset, and the Hub dataset id for the metadata when there is one."""
    if spec == "default":
        return DEFAULT_DATASET_NOTE, None
    if spec.startswith("hub:"):
        return f"the Hub dataset `{spec[4:]}`", [spec[4:]]
    return f"a local dataset (`{Path(spec).name}`)", None


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "`" + json.dumps(value) + "`" if isinstance(value, list | dict) else str(value)


def _flatten(results: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _table(rows: dict, header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | {_format(value).replace('|', '/')} |" for key, value in rows.items()]
    return "\n".join(lines)


def _drawn(what: str, draw: Callable[[], T]) -> T | None:
    """draw()'s result, or None after a logged warning: the card goes out with a trained model, which must never
    be lost to a figure (matplotlib, PIL and file errors alike)."""
    try:
        return draw()
    except Exception as err:
        logger.warning(f"the model card will have no {what}: {type(err).__name__}: {err}")
        return None


def _training_figures(output_dir: Path, up_to_step: int | None) -> list[str]:
    """Markdown for the figures drawn from what train.py left in output_dir; a missing input means no figure."""
    for name in FIGURES:
        (output_dir / name).unlink(missing_ok=True)  # never show a figure left by an earlier save or run
    parts = []
    history = output_dir / plots.LOSS_HISTORY
    if history.is_file() and _drawn("loss plot", lambda: plots.plot_loss(history, output_dir / "loss.png")):
        parts.append("![Training loss](loss.png)")
    samples, steps = output_dir / "samples", None
    if len(plots.sample_grids(samples, up_to_step)) >= 2:
        steps = _drawn("samples-over-training figure", lambda: plots.samples_over_training(
            samples, output_dir / "samples_over_training.png", up_to_step=up_to_step))
    if steps:
        parts.append("![Samples over training](samples_over_training.png)\n\nThe sample grid, drawn from the same "
                     f"noise, at steps {', '.join(map(str, steps))}: how the sprites took shape.")
    return parts


def write_model_card(output_dir: str | Path, *, context_names: list[str], resolution: int, dataset: str,
                     settings: dict, summary: dict, license: str, repo_id: str | None = None,
                     eval_results: dict | None = None) -> Path:
    """README.md with Hub metadata, usage, the sample grid, training settings, figures and evaluation.

    The training figures (loss.png, samples_over_training.png) are drawn here from loss_history.csv and
    samples/step_*.png when output_dir has them; without them, or if drawing fails, the card has none.
    """
    output_dir = Path(output_dir)
    dataset_text, dataset_ids = _dataset(dataset)
    data = ModelCardData(library_name="diffusers", license=license, tags=TAGS, datasets=dataset_ids,
                         pipeline_tag="unconditional-image-generation")
    source = repo_id or str(output_dir)
    parts = [
        f"# {repo_id.split('/')[-1] if repo_id else output_dir.name}",
        f"A small diffusion model that draws {resolution}x{resolution} game sprites for a context: "
        f"{', '.join(context_names)} (one-hot, mixed like `[1, 0, 0.6, ...]`, or all zeros for any sprite). "
        "A diffusers `UNet2DModel` predicts the noise; trained with Sprite Diffusion's `training/train.py`, "
        "following DeepLearning.AI's *How Diffusion Models Work*.",
        "## Samples",
        f"![Samples, one row per context](samples.png)\n\nRows, top to bottom: {', '.join(context_names)}. "
        "Same seed for every grid of a run.",
        "## Usage",
        "The pipeline class lives in the Sprite Diffusion repository (`model/`):\n\n```python\n"
        f"from model import load_pipeline\n\npipe = load_pipeline({source!r})\n"
        f"out = pipe({context_names[0]!r}, num_images=16, num_inference_steps=50, sampler=\"ddim\", seed=0)\n"
        "out.images[0].save(\"sprite.png\")\n```",
        "## Training data",
        f"Trained on {dataset_text}.",
        "## Training",
        _table(summary, ("result", "value")),
        *_training_figures(output_dir, summary.get("steps") if isinstance(summary.get("steps"), int) else None),
        "### Settings",
        _table(settings, ("flag", "value")),
    ]
    if eval_results:
        parts += ["## Evaluation", _table(_flatten(eval_results), ("metric", "value"))]
        figures = sorted((output_dir / "eval").glob("*.png"))
        parts += [f"![{f.stem}](eval/{f.name})" for f in figures]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")
    path = output_dir / "README.md"
    card.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Push a trained sprite model folder to the Hub.")
    parser.add_argument("output_dir", help="the --output_dir of a finished training run")
    parser.add_argument("--hub_model_id", required=True, help="OWNER/NAME (or NAME in your namespace)")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repo as private")
    parser.add_argument("--hub_token", default=None, help="token (default: HF_TOKEN or the cached login)")
    args = parser.parse_args(argv)
    if not (Path(args.output_dir) / "model_index.json").is_file():
        print(f"error: {args.output_dir} holds no trained pipeline (model_index.json missing)", file=sys.stderr)
        return 1
    try:
        repo_id = push_folder(args.output_dir, args.hub_model_id, token=args.hub_token,
                              private=args.hub_private_repo)
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
