"""A small CNN "judge" that tells a dataset's contexts apart, used to evaluate generated sprites.

The judge gives two things to ``training.evaluate``: its predicted context (for context
accuracy) and its penultimate layer (the features for the Fréchet distance). It trains on
one half of a fixed, seeded, stratified split; the other half gives a stable held-out accuracy
and the unseen real sprites that the Fréchet reference needs (see docs/evaluation.md).

    python -m training.judge --dataset default --output training/judges/default

Class of a sprite: the argmax of its context vector (the first context when several tie),
so a multi-hot sprite counts as its first context.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

JUDGES_DIR = Path(__file__).resolve().parent / "judges"
SPLIT_SEED = 0
HELDOUT_FRACTION = 0.5
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


class JudgeError(ValueError):
    """A judge is missing, broken, or does not fit the dataset or model it is asked about."""


class Judge(nn.Module):
    """conv-conv-pool stages, then a linear feature layer (the FD features), then a linear classifier."""

    def __init__(self, num_classes: int, resolution: int = 16, channels: tuple[int, ...] = (32, 64),
                 feature_dim: int = 64, dropout: float = 0.2):
        super().__init__()
        if resolution % 2 ** len(channels):
            raise JudgeError(f"judge resolution {resolution} must be divisible by {2 ** len(channels)}")
        layers, c_in = [], 3
        for c in channels:
            for c_prev in (c_in, c):
                layers += [nn.Conv2d(c_prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in = c
        side = resolution // 2 ** len(channels)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.resolution = resolution

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, feature_dim) penultimate activations."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# ---- data helpers shared with evaluate.py --------------------------------------------
def class_labels(contexts: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, C) one/multi-hot context vectors -> (N,) class index: the argmax, first context on ties."""
    contexts = np.asarray(contexts)
    if (contexts.max(axis=1) <= 0).any():
        raise JudgeError("some sprites have an all-zero context vector; every sprite needs a context to be judged")
    return contexts.argmax(axis=1)


def to_uint8_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) floats in [-1, 1] (dataset form) -> (N, R, R, 3) uint8; uint8 input passes through."""
    images = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def to_judge_input(images: np.ndarray) -> torch.Tensor:
    """(N, R, R, 3) uint8 -> (N, 3, R, R) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split -> (rest, part) index arrays; each class with 2+ sprites gets 1+ in each."""
    rng = np.random.default_rng(seed)
    rest, part = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        part.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(part))


def fingerprint(images_uint8: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the sprites and their classes: a judge's split is only valid for the data it was made on."""
    digest = hashlib.sha256(np.ascontiguousarray(images_uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


@torch.no_grad()
def judge_outputs(judge: Judge, images_uint8: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """-> (predicted class (N,), features (N, D) float64) for uint8 sprites."""
    judge.eval()
    device = next(judge.parameters()).device
    preds, feats = [], []
    for start in range(0, len(images_uint8), batch_size):
        x = to_judge_input(images_uint8[start:start + batch_size]).to(device)
        f = judge.features(x)
        preds.append(judge.head(f).argmax(1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(preds).numpy(), torch.cat(feats).numpy()


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, names: list[str]) -> dict[str, float]:
    return {name: float((pred[target == c] == c).mean()) for c, name in enumerate(names) if (target == c).any()}


# ---- training --------------------------------------------------------------------------
def _augment(x: torch.Tensor, generator: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """Random horizontal flips and shifts of up to one pixel (edge pixels repeat into the gap)."""
    b, _, r, _ = x.shape
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dy, dx = torch.randint(0, 3, (2, b), generator=generator)
    rows = (torch.arange(r)[None] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(r)[None] + dx[:, None])[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]


def train_judge(images_uint8: np.ndarray, labels: np.ndarray, context_names: list[str], *, epochs: int = 30,
                batch_size: int = 128, lr: float = 3e-3, seed: int = SPLIT_SEED,
                heldout_fraction: float = HELDOUT_FRACTION, architecture: dict | None = None,
                hflip: bool = True, log_every: int = 10) -> tuple[Judge, dict]:
    """Train on the seeded stratified split and measure on its held-out part -> (judge, config).

    Classes are weighted by inverse frequency so a small class (food) is not ignored; the
    generated sets it judges are balanced.
    """
    num_classes = len(context_names)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts < 2).any():
        short = [n for n, k in zip(context_names, counts, strict=True) if k < 2]
        raise JudgeError(f"contexts {short} have fewer than 2 sprites; a judge needs some of each to train and test")
    train_idx, heldout_idx = stratified_split(labels, heldout_fraction, seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    arch = {"resolution": images_uint8.shape[1], "channels": [32, 64], "feature_dim": 64, **(architecture or {})}
    judge = Judge(num_classes, arch["resolution"], tuple(arch["channels"]), arch["feature_dim"])
    x = to_judge_input(images_uint8[train_idx])
    y = torch.from_numpy(labels[train_idx]).long()
    class_weight = torch.tensor(len(y) / (num_classes * np.bincount(labels[train_idx], minlength=num_classes)),
                                dtype=torch.float32)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        judge.train()
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for i in range(steps_per_epoch):
            batch = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(judge(_augment(x[batch], generator, hflip)), y[batch], weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        if log_every and ((epoch + 1) % log_every == 0 or epoch + 1 == epochs):
            print(f"epoch {epoch + 1}/{epochs}  loss {total / len(y):.4f}  ({time.perf_counter() - start:.0f} s)")
    pred, _ = judge_outputs(judge, images_uint8[heldout_idx])
    target = labels[heldout_idx]
    per_class = per_class_accuracy(pred, target, context_names)
    config = {
        "context_names": list(context_names),
        "architecture": arch,
        "label_rule": "argmax of the context vector (first context on ties)",
        "split_seed": seed,
        "heldout_fraction": heldout_fraction,
        "num_train": int(len(train_idx)),
        "num_heldout": int(len(heldout_idx)),
        "heldout_accuracy": float(np.mean(list(per_class.values()))),
        "heldout_accuracy_plain": float((pred == target).mean()),
        "heldout_accuracy_per_context": per_class,
        "dataset_fingerprint": fingerprint(images_uint8, labels),
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                     "augment": ("hflip, " if hflip else "") + "1 px shift",
                     "seconds": round(time.perf_counter() - start, 1)},
        "parameters": sum(p.numel() for p in judge.parameters()),
    }
    return judge.eval(), config


# ---- saving and loading -------------------------------------------------------------------
def save_judge(judge: Judge, config: dict, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(judge, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def load_judge(folder: str | Path) -> tuple[Judge, dict]:
    """Read config.json + model.safetensors; JudgeError names the folder and what is wrong."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise JudgeError(f"judge folder {folder}: missing {name} (train one with "
                             f"python -m training.judge --dataset ... --output {folder})")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        arch = config["architecture"]
        judge = Judge(len(config["context_names"]), arch["resolution"], tuple(arch["channels"]), arch["feature_dim"])
        load_model(judge, str(folder / WEIGHTS_NAME))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise JudgeError(f"judge folder {folder}: {CONFIG_NAME} is not a judge config ({type(err).__name__}: {err})"
                         ) from None
    except (RuntimeError, OSError) as err:  # safetensors: wrong shapes or a damaged file
        raise JudgeError(f"judge folder {folder}: weights do not match config ({str(err).splitlines()[0]})") from None
    return judge.eval(), config


def main(argv: list[str] | None = None) -> None:
    from training.sprite_data import DatasetError, add_dataset_args, dataset_from_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_args(parser)
    parser.add_argument("--output", required=True, help="folder for model.safetensors and config.json")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the train/held-out split and training")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: convolutions this small gain nothing from more, and on a "
                             "busy machine 2 threads ran 10x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        data = dataset_from_args(args)
        labels = class_labels(data.contexts)
    except (DatasetError, JudgeError) as err:
        parser.exit(2, f"error: {err}\n")
    images = to_uint8_images(data.images)
    print(f"training a judge on {len(images)} sprites, contexts {data.context_names}, "
          f"counts {np.bincount(labels, minlength=len(data.context_names)).tolist()}")
    judge, config = train_judge(images, labels, list(data.context_names), epochs=args.epochs, seed=args.seed,
                                  hflip=not args.no_hflip)
    config["dataset"] = {"spec": args.dataset, "labels": args.dataset_labels, "revision": args.dataset_revision,
                         "split": args.dataset_split, "downscale": args.downscale}
    save_judge(judge, config, args.output)
    print(json.dumps({k: config[k] for k in ("heldout_accuracy", "heldout_accuracy_per_context", "num_heldout",
                                             "parameters")}, indent=2))
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
