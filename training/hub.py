"""The model card and the push to the Hugging Face Hub.

The push sends only the pipeline (model_index.json, unet/, scheduler/), the card, the sample grid and the
evaluation files; checkpoints and logs stay local. It also works on its own, to retry a failed push without
retraining::

    python -m training.hub runs/sprites --hub_model_id you/sprite-diffusion
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, create_repo, get_token, upload_folder

UPLOAD_PATTERNS = ["model_index.json", "unet/*", "scheduler/*", "README.md", "samples.png", "eval/*",
                   "training_args.json"]
DEFAULT_DATASET_NOTE = ("the bundled Dungeon Crawl Stone Soup sprites (`data/sprites_dcss.npz`; tiles by the "
                        "Dungeon Crawl Stone Soup team and RLTiles contributors, GPL-2+, most of them CC0)")
TAGS = ["diffusers", "ddpm", "pixel-art", "sprites", "class-conditional", "sprite-diffusion"]


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
        repo = create_repo(repo_id, token=token, private=private or None, exist_ok=True)
        upload_folder(repo_id=repo.repo_id, folder_path=str(folder), allow_patterns=UPLOAD_PATTERNS,
                      commit_message=commit_message, token=token)
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


def write_model_card(output_dir: str | Path, *, context_names: list[str], resolution: int, dataset: str,
                     settings: dict, summary: dict, license: str, repo_id: str | None = None,
                     eval_results: dict | None = None) -> Path:
    """README.md with Hub metadata, usage, the sample grid, training settings and evaluation."""
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
