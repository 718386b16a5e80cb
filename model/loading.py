"""Load a SpritePipeline from a local folder or a Hub repo, with one clear error.

Files come through huggingface_hub (so HF_HUB_OFFLINE, HF_HOME and HF_ENDPOINT are
honoured); only JSON configs and safetensors weights are fetched, so nothing from a
model repo is ever unpickled or executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open

from .pipeline import SpritePipeline

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
# The two-pass model the bundled one was distilled from (train.py --distill_guidance): kept to distil it again and
# for the figures measured on it; the app does not load it.
TEACHER_MODEL_DIR = Path(__file__).resolve().parent / "teacher"
REQUIRED_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
)
ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.md"]
# What save_pretrained writes; anything else would load other classes (and skip or randomise weights).
# Sprites, not photos: a config asking for more would make every request allocate huge tensors.
MAX_SAMPLE_SIZE = 128
COMPONENTS = {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which source and what is wrong."""


def _fetch(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    """Download (or find in the cache) the config and safetensors files of a Hub model repo."""
    where = f"Hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=ALLOWED_PATTERNS))
    except RevisionNotFoundError:
        raise ModelLoadError(f"{where}: that revision does not exist") from None
    except GatedRepoError:
        raise ModelLoadError(f"{where}: the repo is gated; accept its terms and log in") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{where}: no such repo (or it is private and no valid token was given)") from None
    except HFValidationError as err:
        raise ModelLoadError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id ({err})") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{where}: not in the local cache and the Hub cannot be reached "
                             "(offline, or HF_HUB_OFFLINE is set)") from None
    except EntryNotFoundError as err:
        raise ModelLoadError(f"{where}: a file is missing ({err})") from None
    except (HfHubHTTPError, OSError) as err:
        raise ModelLoadError(f"{where}: download failed ({type(err).__name__}: {err})") from None


def _local_hint(source: str) -> str:
    """When a Hub-looking id names a folder that exists here (runs/mine when runs/ exists), it was most
    likely a mistyped local path: say so, with what that folder does hold."""
    parent = Path(source).parent
    if parent == Path(".") or not parent.is_dir():
        return ""
    here = sorted(p.name for p in parent.iterdir() if p.is_dir())
    listed = ", ".join(here[:8]) + (", ..." if len(here) > 8 else "") if here else "no folders"
    return f". It is not a local folder either: {parent}/ holds {listed}"


def _weights_problem(unet: torch.nn.Module, weights_file: Path) -> str | None:
    """diffusers leaves missing weights on the meta device and skips unknown ones: both mean a mismatch."""
    with safe_open(weights_file, framework="pt") as f:
        stored = set(f.keys())
    expected = unet.state_dict()
    missing, unknown = sorted(set(expected) - stored), sorted(stored - set(expected))
    if missing or unknown:
        listed = "; ".join(f"{what} {len(keys)} tensors ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                           for what, keys in (("missing", missing), ("unknown", unknown)) if keys)
        return f"{weights_file.parent.name}/{weights_file.name} does not match unet/config.json: {listed}"
    broken = [name for name, w in expected.items() if w.is_floating_point() and not torch.isfinite(w).all()]
    if broken:
        return f"the U-Net weights hold NaN or infinity in {len(broken)} tensors ({', '.join(broken[:3])})"
    return None


def load_pipeline(source: str | Path | None = None, revision: str | None = None,
                  token: str | bool | None = None, device: str | None = None) -> SpritePipeline:
    """Load from a local folder (default: the bundled model) or a Hub repo id.

    Raises ModelLoadError naming the source and the problem: a missing repo or revision,
    missing files, or a config that does not match the weights.
    """
    source = DEFAULT_MODEL_DIR if source is None else source
    folder = Path(source)
    if not folder.is_dir():
        if Path(source).is_absolute() or str(source).startswith((".", "~")):
            raise ModelLoadError(f"model folder {source} does not exist")
        try:
            folder = _fetch(str(source), revision, token)
        except ModelLoadError as err:
            raise ModelLoadError(f"{err}{_local_hint(str(source))}") from None
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"model {source}: missing {', '.join(missing)} (weights must be safetensors)")
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"model {source}: model_index.json is not valid JSON ({err})") from None
    if not isinstance(index, dict) or index.get("_class_name") != SpritePipeline.__name__:
        raise ModelLoadError(f"model {source}: model_index.json does not describe a {SpritePipeline.__name__}")
    wrong = [f"{name} is {index.get(name)}, expected {expected}" for name, expected in COMPONENTS.items()
             if index.get(name) != expected]
    if wrong:
        raise ModelLoadError(f"model {source}: model_index.json names other components ({'; '.join(wrong)})")
    try:
        sample_size = json.loads((folder / "unet" / "config.json").read_text()).get("sample_size")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ModelLoadError(f"model {source}: unet/config.json is not a JSON object ({err})") from None
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or not 1 <= sample_size <= MAX_SAMPLE_SIZE:
        raise ModelLoadError(f"model {source}: unet/config.json sample_size must be a whole number of pixels "
                             f"from 1 to {MAX_SAMPLE_SIZE}, got {sample_size!r}")
    try:
        pipe = SpritePipeline.from_pretrained(folder, use_safetensors=True)
    except Exception as err:  # diffusers raises many kinds here; the message is what matters
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"model {source}: cannot be loaded: {message}") from None
    problem = _weights_problem(pipe.unet, folder / REQUIRED_FILES[3])
    if problem:
        raise ModelLoadError(f"model {source}: {problem}")
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
