"""train.py's flags: the parser (diffusers' train_unconditional.py names where they apply) and its checks."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from diffusers.optimization import SchedulerType

from model.loading import MAX_SAMPLE_SIZE
from model.samplers import SAMPLERS
from model.schedule import PREDICTION_TYPES
from model.unet import PRESETS
from training.sprite_data import add_dataset_args

TIMESTEP_BIAS_STRATEGIES = ("none", "earlier", "later")
PRIVATE_ARGS = ("hub_token", "output_dir", "logging_dir")  # never in the card, the logs or training_args.json


class ConfigError(ValueError):
    """A bad flag value; the message names the flag."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the sprite U-Net on a laptop CPU, one GPU or many.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset_args(p)
    p.add_argument("--model_config", "--model_config_name_or_path", dest="model_config", default="medium1-g16",
                   help=f"model size preset ({', '.join(PRESETS)}) or a UNet config .json")
    p.add_argument("--pretrained_model_name_or_path", default=None,
                   help="start from this model's U-Net (a saved pipeline folder or a Hub repo, e.g. model/teacher; "
                        "not a guidance-distilled one) instead of fresh weights: fine-tuning; its size replaces "
                        "--model_config")
    p.add_argument("--output_dir", default="runs/sprites", help="pipeline, card, checkpoints and logs go here")
    p.add_argument("--seed", type=int, default=0, help="seed for reproducible training")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=256, help="batch size per process")
    # The budget is in passes over the data: 600 epochs are the bundled model's 6,000 steps of 256 on its 2,507
    # sprites; a set of 760 gets 1,800 steps, where 6,000 memorised most of it (docs/study.md).
    g.add_argument("--num_epochs", type=int, default=600,
                   help="passes over the data: the recipe's budget, so a small set gets fewer steps")
    g.add_argument("--max_train_steps", type=int, default=0,
                   help="train exactly this many steps instead of --num_epochs (0: use --num_epochs)")
    g.add_argument("--initial_step", type=int, default=0,
                   help="with --pretrained_model_name_or_path: continue a run whose checkpoints are lost from its "
                        "exported weights, its learning rate and EMA warm-up at this step of --max_train_steps")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=1e-3)
    g.add_argument("--lr_scheduler", default="cosine",
                   choices=[s.value for s in SchedulerType if s.value != "piecewise_constant"])
    g.add_argument("--lr_warmup_steps", type=int, default=200)
    g.add_argument("--adam_beta1", type=float, default=0.95)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-6)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon",
                   help="what the U-Net learns to output: the noise (the course's) or v")
    g.add_argument("--snr_gamma", type=float, default=None,
                   help="min-SNR-gamma loss weighting (5 is the paper's); default: plain MSE")
    # diffusers' SDXL training script's names and meaning: "earlier" draws more of the low-noise steps.
    g.add_argument("--timestep_bias_strategy", choices=TIMESTEP_BIAS_STRATEGIES, default="none",
                   help="draw training steps t unevenly: 'earlier' favours the low-noise end, where the last "
                        "denoising steps decide whether a pixel lands exactly on its colour")
    g.add_argument("--timestep_bias_multiplier", type=float, default=1.0,
                   help="weight of the favoured steps against the others")
    g.add_argument("--timestep_bias_portion", type=float, default=0.25, help="share of the steps favoured")
    g.add_argument("--max_train_minutes", type=float, default=None,
                   help="stop at the first logging step after this many minutes and save (a time-boxed run)")
    g.add_argument("--class_balance", choices=["none", "sqrt", "equal"], default="none",
                   help="draw each context as often as its share of the data (none), of the square roots of the "
                        "class sizes (sqrt), or all contexts alike (equal): small contexts such as food seen more")
    g.add_argument("--distill_guidance", type=float, default=0.0, metavar="MAX_SCALE",
                   help="guidance distillation: fine-tune --pretrained_model_name_or_path to predict its own "
                        "classifier-free guided output at scales 1..MAX_SCALE in one pass (0: off)")
    g.add_argument("--guidance_learning_rate", type=float, default=5e-3,
                   help="guidance distillation: the learning rate of the new guidance rows of the class table, which "
                        "start at zero and must grow to the size of a context's row (its context rows stay fixed)")
    g.add_argument("--context_dropout", type=float, default=0.1,
                   help="probability of zeroing a sample's context (the unconditional case guidance needs)")
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True,
                   help="keep an exponential moving average of the weights and export it (default on)")
    g.add_argument("--ema_inv_gamma", type=float, default=1.0)
    g.add_argument("--ema_power", type=float, default=3 / 4)
    g.add_argument("--ema_max_decay", type=float, default=0.9999)
    g = p.add_argument_group("speed")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: the accelerate config's setting")
    g.add_argument("--channels_last", action="store_true", help="channels-last memory format (GPUs)")
    g.add_argument("--torch_compile", action="store_true", help="compile the U-Net with torch.compile")
    g = p.add_argument_group("checkpoints, samples and logs")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="0 turns checkpoints off")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    g.add_argument("--save_images_steps", type=int, default=500, help="sample grid every N steps; 0 = only at the end")
    g.add_argument("--samples_per_context", type=int, default=8, help="sprites per context (row) in the grid")
    g.add_argument("--sample_steps", type=int, default=50, help="denoising steps for the grid")
    g.add_argument("--sample_sampler", choices=list(SAMPLERS), default="ddim")
    g.add_argument("--logger", choices=["tensorboard", "none"], default="tensorboard")
    g.add_argument("--logging_dir", default="logs", help="under --output_dir")
    g.add_argument("--logging_steps", type=int, default=10, help="log loss, learning rate and images/s every N steps")
    g.add_argument("--eval_samples", type=int, default=0,
                   help="sprites per context for training/evaluate.py at the end (0 = skip)")
    g = p.add_argument_group("hub")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--push_at_checkpoints", action="store_true", help="also push the EMA pipeline at checkpoints")
    g.add_argument("--hub_model_id", default=None, help="OWNER/NAME (default: the output folder's name)")
    g.add_argument("--hub_private_repo", action="store_true")
    g.add_argument("--hub_token", default=None, help="default: HF_TOKEN or the cached login (safer)")
    g.add_argument("--model_license", default=None,
                   help="licence in the card (default: gpl-2.0 for the bundled data, else 'other')")
    g = p.add_argument_group("debugging")
    g.add_argument("--debug_record_indices", action="store_true",
                   help="write the dataset indices each process trained on to seen_indices_rank<k>.json")
    g.add_argument("--debug_step_delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: time to kill
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad values before anything slow happens; make sure the output folder is writable."""
    positive = ["train_batch_size", "num_epochs", "gradient_accumulation_steps", "logging_steps",
                "samples_per_context", "sample_steps"]
    for name in positive + ["checkpoints_total_limit"]:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be at least 1, got {value}")
    for name in ("max_train_steps", "checkpointing_steps", "save_images_steps", "eval_samples", "lr_warmup_steps"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must not be negative, got {getattr(args, name)}")
    if not 0 < args.timestep_bias_portion <= 1:
        raise ConfigError(f"--timestep_bias_portion must be above 0 and at most 1, got {args.timestep_bias_portion}")
    for name in ("snr_gamma", "max_train_minutes", "timestep_bias_multiplier"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.initial_step and not (args.pretrained_model_name_or_path and 0 < args.initial_step < args.max_train_steps):
        raise ConfigError(f"--initial_step {args.initial_step} continues --pretrained_model_name_or_path's run: "
                          "it needs that model and a --max_train_steps above it")
    if args.distill_guidance and not (args.pretrained_model_name_or_path and 1 < args.distill_guidance <= 20):
        raise ConfigError(f"--distill_guidance {args.distill_guidance:g} distils --pretrained_model_name_or_path's "
                          "guidance: it needs that model and a largest scale above 1 and at most 20")
    if not 0 <= args.context_dropout <= 1:
        raise ConfigError(f"--context_dropout must be between 0 and 1, got {args.context_dropout}")
    if not 1 <= args.resolution <= MAX_SAMPLE_SIZE:
        raise ConfigError(f"--resolution must be from 1 to {MAX_SAMPLE_SIZE} pixels, got {args.resolution}")
    for name in ("learning_rate", "guidance_learning_rate"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(args, name)}")
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a unique name: several processes may check at once
            pass
    except OSError as err:
        raise ConfigError(f"--output_dir {out} is not writable: {err.strerror or err}") from None


def guidance_knots(args: argparse.Namespace) -> list[float] | None:
    """The guidance scales a distilled model has a class-table row for: every whole scale from 1 (guidance off,
    where the student starts out right) to the largest. Scale 0 is the unconditional model, one pass anyway."""
    return [float(k) for k in range(1, math.ceil(args.distill_guidance) + 1)] if args.distill_guidance else None


def public_settings(args: argparse.Namespace) -> dict:
    """The flags as the card, TensorBoard and training_args.json show them: no token, no local paths."""
    settings = {k: v for k, v in vars(args).items() if k not in PRIVATE_ARGS and not k.startswith("debug_")}
    if settings["dataset"] != "default" and not settings["dataset"].startswith("hub:"):
        settings["dataset"] = Path(settings["dataset"]).name
    start = settings.get("pretrained_model_name_or_path")
    if start:
        settings["model_config"] = None  # the size is the started-from model's; the preset flag was not used
        if Path(start).is_dir():  # a local folder: its name, not where it sits
            settings["pretrained_model_name_or_path"] = Path(start).name
    return settings
