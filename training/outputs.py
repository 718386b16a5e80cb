"""What a training run leaves behind: the sample grid at each checkpoint, and at the end (or at each checkpoint
with --push_at_checkpoints) the pipeline in the diffusers layout with EMA weights, its scores, its model card
and the push to the Hub. Called by train.py on the main process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from model import SpritePipeline, make_scheduler
from training import checkpointing, hub, plots
from training.evaluate import evaluate_pipeline
from training.options import guidance_knots, public_settings
from training.sample_grid import context_grid, save_grid

logger = get_logger(__name__)


def export_pipeline(accelerator: Accelerator, unet, ema: EMAModel | None, context_names: list[str],
                    prediction_type: str = "epsilon", guidance_knots: list[float] | None = None) -> SpritePipeline:
    """A fresh SpritePipeline holding a copy of the weights (the EMA ones when there is an EMA)."""
    trained = accelerator.unwrap_model(unet)
    copy = UNet2DModel.from_config(trained.config)
    copy.load_state_dict(trained.state_dict())
    if ema is not None:
        ema.copy_to(copy.parameters())
    pipe = SpritePipeline(copy.to(accelerator.device).eval(), make_scheduler(prediction_type=prediction_type),
                          context_names, guidance_knots)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(pipe: SpritePipeline, args: argparse.Namespace, output_dir: Path) -> dict | None:
    """training/evaluate.py's scores for the card; they also go to eval/metrics.json. None when scoring fails."""
    try:
        results = evaluate_pipeline(pipe, args.dataset, num_per_context=args.eval_samples, seed=args.seed or 0)
    except Exception as err:  # e.g. no judge for this dataset: the trained model matters more than its scores
        logger.warning(f"evaluation failed, the card will have no scores: {type(err).__name__}: {err}")
        return None
    (output_dir / "eval").mkdir(exist_ok=True)
    (output_dir / "eval" / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def save_outputs(accelerator: Accelerator, unet, ema: EMAModel | None, names: list[str], args: argparse.Namespace,
                 step: int, final: bool, summary: dict | None = None,
                 history: list[plots.LossRow] | None = None) -> int:
    """Main process: loss history and sample grid; at the end (or --push_at_checkpoints) the pipeline, card
    (with its loss and progress figures, see plots.py) and push."""
    output_dir = Path(args.output_dir)
    if history is not None:
        plots.write_loss_history(output_dir / plots.LOSS_HISTORY, history)
    pipe = export_pipeline(accelerator, unet, ema, names, args.prediction_type, guidance_knots(args))
    grid = context_grid(pipe, args.samples_per_context, args.sample_steps, args.sample_sampler)
    save_grid(grid, output_dir / "samples" / f"step_{step:06d}.png")
    if args.logger == "tensorboard":
        accelerator.get_tracker("tensorboard").log_images({"samples": grid[None]}, step=step, dataformats="NHWC")
    pushing = args.push_to_hub and (final or args.push_at_checkpoints)
    if not (final or pushing):
        return 0
    save_grid(grid, output_dir / "samples.png")
    checkpointing.save_pipeline(pipe, output_dir)
    eval_results = evaluate(pipe, args, output_dir) if final and args.eval_samples else None
    repo_id = args.hub_model_id or output_dir.resolve().name
    licence = args.model_license or ("gpl-2.0" if args.dataset == "default" else "other")
    hub.write_model_card(output_dir, context_names=names, resolution=args.resolution, dataset=args.dataset,
                         settings=public_settings(args), summary=summary or {"steps": step}, license=licence,
                         repo_id=repo_id if args.push_to_hub else None, eval_results=eval_results)
    logger.info(f"saved the pipeline (step {step}) to {output_dir}")
    if not pushing:
        return 0
    try:
        pushed = hub.push_folder(output_dir, repo_id, token=args.hub_token, private=args.hub_private_repo,
                                 commit_message=f"Sprite diffusion model, step {step}")
    except hub.PushError as err:
        logger.error(f"{err}. The trained model is kept in {output_dir}; retry with: "
                     f"python -m training.hub {output_dir} --hub_model_id {repo_id}")
        return 1
    logger.info(f"pushed step {step} to {pushed}")
    return 0
