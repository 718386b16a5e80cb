"""Checkpoints that survive a kill or a full disk.

A checkpoint is ``output_dir/checkpoint-<step>``: accelerate's ``save_state`` (model, optimizer, LR scheduler,
RNG states) plus the EMA weights in ``ema/`` (safetensors and a config.json with the EMA step, written by
diffusers' ``EMAModel.save_pretrained`` from a save-state hook). Every process writes into
``.tmp-checkpoint-<step>`` and the folder only gets its final name once all of them are done, so a kill
mid-save never leaves a half-written folder that ``latest`` would pick. The step is the folder's number.

The EMA goes through a hook rather than ``register_for_checkpointing``: that path pickles the weights and
unpickles them with ``weights_only=False``; this project keeps weights in safetensors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
EMA_DIR = "ema"
EMA_STATE = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")
NAME = re.compile(r"checkpoint-(\d+)")
# What accelerate.save_state writes for one model, one optimizer and one LR scheduler.
REQUIRED_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin")


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or written; the message names it."""


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints in output_dir, oldest first (temporary folders are not checkpoints)."""
    root = Path(output_dir)
    found = [p for p in root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)] if root.is_dir() else []
    return sorted(found, key=step_of)


def step_of(path: str | Path) -> int:
    """The training step a checkpoint folder was saved at (from its name)."""
    match = NAME.fullmatch(Path(path).name)
    if not match:
        raise CheckpointError(f"{path} is not a checkpoint folder (expected a name like checkpoint-500)")
    return int(match.group(1))


def check_checkpoint(path: Path, with_ema: bool) -> None:
    """Raise CheckpointError unless path holds every file a resume needs, with readable safetensors."""
    required = list(REQUIRED_FILES) + ([f"{EMA_DIR}/config.json", f"{EMA_DIR}/diffusion_pytorch_model.safetensors"]
                                       if with_ema else [])
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted: missing {', '.join(missing)}; "
                              "delete it or resume from an earlier checkpoint")
    for name in required:
        if name.endswith(".safetensors"):
            try:
                with safe_open(path / name, framework="pt") as f:
                    f.keys()
            except Exception as err:  # safetensors raises its own error types for bad headers and sizes
                raise CheckpointError(f"checkpoint {path} is corrupted: {name} cannot be read ({err}); "
                                      "delete it or resume from an earlier checkpoint") from None


def resolve_resume(spec: str | None, output_dir: str | Path, with_ema: bool) -> Path | None:
    """--resume_from_checkpoint: None, "latest" (None when there is none yet), a path, or a name in output_dir."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("no checkpoint in %s yet: starting a new training run", output_dir)
            return None
        path = found[-1]
    else:
        path = Path(spec)
        if not path.exists() and not path.is_absolute() and (Path(output_dir) / spec).exists():
            path = Path(output_dir) / spec
        if not path.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {spec}: no such checkpoint folder")
        if not NAME.fullmatch(path.name):
            raise CheckpointError(f"--resume_from_checkpoint {spec} is not a checkpoint folder "
                                  "(expected checkpoint-<step> as written by this script, or 'latest')")
    check_checkpoint(path, with_ema)
    return path


def register_ema(accelerator: Accelerator, ema: EMAModel) -> None:
    """Save and load the EMA weights with every accelerate checkpoint (safetensors, in ema/)."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            ema.save_pretrained(os.path.join(output_dir, EMA_DIR))

    def load_hook(models, input_dir):
        # What EMAModel.from_pretrained does, without building a second model (and its config warnings).
        folder = Path(input_dir) / EMA_DIR
        config = json.loads((folder / "config.json").read_text())
        weights = load_file(folder / "diffusion_pytorch_model.safetensors", device=str(accelerator.device))
        names = [name for name, _ in accelerator.unwrap_model(models[0]).named_parameters()]
        ema.load_state_dict({**{key: config[key] for key in EMA_STATE if key in config},
                             "shadow_params": [weights[name] for name in names]})

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_checkpoint(accelerator: Accelerator, path: Path) -> int:
    """accelerator.load_state with a clear error naming the checkpoint; returns its step."""
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # torch, safetensors and diffusers raise many kinds for damaged files
        reason = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {path} is corrupted or does not match this model "
                              f"({type(err).__name__}: {reason}); delete it or resume from an earlier checkpoint"
                              ) from None
    return step_of(path)


def remove_stale_temporaries(output_dir: str | Path) -> None:
    """Delete .tmp-checkpoint-* folders left by a run killed while saving (main process only)."""
    root = Path(output_dir)
    for tmp in root.glob(f"{TMP_PREFIX}*") if root.is_dir() else []:
        logger.warning("removing %s: an interrupted checkpoint save", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _first_error(accelerator: Accelerator, error: BaseException | None) -> str | None:
    """Share one process's failure with all (a collective, so it also acts as a barrier)."""
    messages = gather_object([None if error is None else f"{type(error).__name__}: {error}"])
    return next((m for m in messages if m), None)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int,
                    total_limit: int | None = None) -> Path:
    """Write checkpoint-<step> atomically, then prune the oldest beyond total_limit. Call on every process.

    On failure (a full or read-only disk) the temporary folder is removed, earlier checkpoints stay as they
    were, and CheckpointError says what happened.
    """
    root = Path(output_dir)
    final, tmp = root / f"{PREFIX}{step}", root / f"{TMP_PREFIX}{step}"
    previous = [p for p in list_checkpoints(root) if p != final]
    error = None
    try:
        accelerator.save_state(str(tmp))
    except Exception as err:  # OSError from the disk, or safetensors' own error type wrapping one
        error = err
    message = _first_error(accelerator, error)
    if message is None and accelerator.is_main_process:
        try:
            if final.exists():  # left by an earlier run in the same folder: replace it
                shutil.rmtree(final)
            tmp.rename(final)
        except OSError as err:
            error = err
    message = message or _first_error(accelerator, error)
    if message is not None:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the last good checkpoint, {previous[-1]}, is kept" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {final} ({message}); {kept}")
    if accelerator.is_main_process and total_limit:
        for old in [p for p in sorted(previous + [final], key=step_of)[:-total_limit] if p != final]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("removed %s (--checkpoints_total_limit %d)", old, total_limit)
    accelerator.wait_for_everyone()
    return final


def save_pipeline(pipe, output_dir: str | Path) -> None:
    """save_pretrained into a temporary folder, then swap each component in and model_index.json last.

    diffusers writes straight into the target, so a kill mid-save would pair a new config with old
    weights. Here a kill leaves either the old pipeline, or a component missing (which the loader
    names), never a mix; the checkpoints are untouched either way.
    """
    output_dir = Path(output_dir)
    staging = output_dir / ".tmp-pipeline"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == "model_index.json"):
        target = output_dir / entry.name
        if entry.is_dir():
            old = output_dir / f".old-{entry.name}"
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                os.replace(target, old)
            os.replace(entry, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, target)
    staging.rmdir()
