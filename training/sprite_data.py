"""Sprite datasets behind one interface: load_dataset(spec) -> SpriteDataset.

spec is one of
  "default"           the bundled Dungeon Crawl sprites (data/sprites_dcss.npz)
  path/to/images.npy  the course's format: (N, H, W, 3) uint8 plus an (N, C) one/multi-hot label .npy
  path/to/folder      one subfolder of images per context (PNG, JPEG, GIF, WebP)
  hub:OWNER/NAME      a Hugging Face Hub dataset, through the `datasets` library
Every bad input raises DatasetError naming the file or field, never a library's traceback.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.sprites import (  # noqa: F401  (the pixel helpers and the bundled set live in the core)
    BACKGROUND,
    DEFAULT_NPZ,
    DOWNSCALES,
    DatasetError,
    default_sprites,
    fit_pixel_art,
    palette_downscale,
    resize_array,
)

COURSE_CONTEXTS = ["hero", "non-hero", "food", "spell", "side-facing"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")


@dataclass(eq=False)
class SpriteDataset(torch.utils.data.Dataset):
    """Images in [-1, 1] with their context vectors; flips at random when hflip is on."""

    images: torch.Tensor  # (N, 3, R, R) float32 in [-1, 1]
    contexts: torch.Tensor  # (N, C) float32 one-hot or multi-hot
    context_names: list[str]
    hflip: bool = True

    def __post_init__(self):
        n, c = self.contexts.shape
        assert self.images.ndim == 4 and self.images.shape[0] == n and self.images.shape[1] == 3
        assert len(self.context_names) == c

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.contexts[i]


# ----------------------------------------------------------------------------- pixels

def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels must be (N, C) with entries 0 or 1 and at least one 1 per row."""
    if labels.ndim != 2 or labels.shape[1] == 0:
        raise DatasetError(f"{where}: labels must be an (N, C) one-hot or multi-hot array, got shape {labels.shape}")
    if labels.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: labels must be numbers, got dtype {labels.dtype}")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DatasetError(f"{where}: labels must be one-hot or multi-hot (0 or 1); "
                           f"row {row} is {labels[row].tolist()}")
    empty = np.flatnonzero(labels.sum(1) == 0)
    if len(empty):
        raise DatasetError(f"{where}: labels must be one-hot or multi-hot; row {int(empty[0])} has no 1")
    return labels


def _names(context_names: list[str] | None, n: int, default: list[str], where: str) -> list[str]:
    names = list(context_names) if context_names else default
    if len(names) != n:
        raise DatasetError(f"context_names: {len(names)} names {names} for {n} label columns in {where}")
    return names


def _make(images: np.ndarray, labels: np.ndarray, names: list[str], resolution: int, hflip: bool) -> SpriteDataset:
    """uint8 (N, H, W, 3) + labels -> SpriteDataset at the training resolution."""
    x = torch.from_numpy(np.ascontiguousarray(resize_array(images, resolution)))
    x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    return SpriteDataset(x, torch.from_numpy(labels.astype(np.float32)), list(names), hflip)


# ----------------------------------------------------------------------------- loaders

def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npy {what} array ({e})") from None


def _sibling_labels(images_path: Path) -> Path:
    """The labels file beside an image array, as the course names it (sprites_* -> sprite_labels_nc_*)."""
    name = images_path.name
    candidates = [name.replace("sprites_", "sprite_labels_nc_", 1), name.replace(".npy", "_labels.npy"),
                  name.replace("images", "labels", 1), "labels.npy"]
    for c in candidates:
        if c != name and (images_path.parent / c).is_file():
            return images_path.parent / c
    raise DatasetError(f"{images_path}: no labels file found beside it (tried {', '.join(candidates[:3])}); "
                       "name one with labels_path / --dataset_labels")


def load_course_arrays(images_path: str | Path, labels_path: str | Path | None = None,
                       context_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The course's two .npy arrays, checked: uint8 (N, H, W, 3) images and (N, C) one/multi-hot labels."""
    images_path = Path(images_path)
    images = _load_npy(images_path, "image")
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise DatasetError(f"{images_path}: images must have shape (N, H, W, 3) with N > 0, got {images.shape}")
    if images.dtype != np.uint8:
        raise DatasetError(f"{images_path}: images must be uint8 (0-255), got dtype {images.dtype}")
    labels_path = Path(labels_path) if labels_path else _sibling_labels(images_path)
    labels = _load_npy(labels_path, "label")
    if labels.ndim >= 1 and len(labels) != len(images):
        raise DatasetError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    labels = _check_labels(labels, str(labels_path))
    return images, labels, _names(context_names, labels.shape[1], COURSE_CONTEXTS, str(labels_path))


def read_image(path: Path, resolution: int) -> np.ndarray:
    """One image file -> (R, R, 3) uint8, with a DatasetError naming the file when it can't be read."""
    try:
        with Image.open(path) as im:
            im.seek(0)  # first frame of an animated GIF or WebP
            return fit_pixel_art(im.convert("RGBA"), resolution)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: unreadable or corrupt image ({e})") from None


def load_image_folder(root: str | Path, resolution: int = 16,
                      context_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """ImageFolder layout: root/<context>/<image>; context_names picks and orders the subfolders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    names = list(context_names) if context_names else sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DatasetError(f"{root}: no context subfolders (expected {root}/<context>/<images>)")
    images, labels = [], []
    for k, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: context folder not found (context_names: {names})")
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"{folder}: context {name!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        images += [read_image(f, resolution) for f in files]
        labels += [k] * len(files)
    return np.stack(images), np.eye(len(names), dtype=np.uint8)[labels], names


def _hf_datasets():
    """Hugging Face `datasets`, imported on first use: it is slow to import and only the hub: specs need it."""
    import datasets

    return datasets


def _hub_npy(repo: str, revision: str | None, image_column: str, label_column: str,
             context_names: list[str] | None, first_error: Exception):
    """Hub repos holding the course's .npy pair (no table for `datasets`): fetch them and load as .npy."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=["*.npy"]))
    except Exception:
        folder = None
    files = sorted(folder.rglob("*.npy")) if folder else []
    if not files:
        raise DatasetError(f"hub:{repo} (revision {revision or 'main'}): could not load it with `datasets`: "
                           f"{type(first_error).__name__}: {first_error}") from None
    by_name = {f.name: f for f in files}
    images = by_name.get(image_column) or next((f for f in files if "label" not in f.name), None)
    labels = by_name.get(label_column) or next((f for f in files if "label" in f.name), None)
    if images is None or labels is None:
        raise DatasetError(f"hub:{repo}: found {[f.name for f in files]}; name the image and label .npy files "
                           "with image_column / label_column")
    return load_course_arrays(images, labels, context_names)


def _hub_labels(ds, column: str, context_names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """A label column as (N, C) one/multi-hot: ClassLabel ints, lists of ClassLabel, 0/1 vectors, ints or strings."""
    hf = _hf_datasets()
    feature = ds.features[column]
    inner = getattr(feature, "feature", None)  # List / Sequence of something
    values = list(ds[column])
    if isinstance(feature, hf.ClassLabel) or isinstance(inner, hf.ClassLabel):
        names = (feature if isinstance(feature, hf.ClassLabel) else inner).names
        names = _names(context_names, len(names), names, f"{where} column {column!r}")
        out = np.zeros((len(values), len(names)), np.uint8)
        for i, v in enumerate(values):
            v = [v] if v is None or np.ndim(v) == 0 else list(v)
            if any(c is None or not 0 <= c < len(names) for c in v):
                raise DatasetError(f"{where} column {column!r}: row {i} has no valid label ({v})")
            out[i, v] = 1
        return _check_labels(out, f"{where} column {column!r}"), names
    try:
        arr = np.asarray(values)
    except ValueError:
        raise DatasetError(f"{where} column {column!r}: label vectors have different lengths") from None
    if arr.ndim == 1 and arr.dtype.kind in "iuU":
        classes = sorted(set(arr.tolist()))
        default = [str(c) for c in classes] if arr.dtype.kind == "U" else [str(c) for c in range(max(classes) + 1)]
        names = _names(context_names, len(default), default, f"{where} column {column!r}")
        index = {c: i for i, c in enumerate(classes)} if arr.dtype.kind == "U" else {c: c for c in classes}
        if arr.dtype.kind in "iu" and min(classes) < 0:
            raise DatasetError(f"{where} column {column!r}: negative class index {min(classes)}")
        return np.eye(len(names), dtype=np.uint8)[[index[v] for v in arr.tolist()]], names
    labels = _check_labels(arr, f"{where} column {column!r}")
    return labels, _names(context_names, labels.shape[1], COURSE_CONTEXTS, f"{where} column {column!r}")


def _hub_images(values, column: str, resolution: int, where: str) -> np.ndarray:
    """An image column (decoded PIL images, or nested uint8 arrays) -> (N, R, R, 3) uint8."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, Image.Image):
            out.append(fit_pixel_art(v, resolution))
            continue
        arr = np.asarray(v)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.dtype.kind not in "iu":
            raise DatasetError(f"{where} column {column!r}: row {i} is not an image or (H, W, 3) integer array")
        out.append(fit_pixel_art(Image.fromarray(arr.astype(np.uint8)), resolution))
    return np.stack(out)


def load_hub(repo: str, revision: str | None = None, split: str = "train", image_column: str = "image",
             label_column: str = "label", context_names: list[str] | None = None,
             resolution: int = 16) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A Hub dataset through datasets.load_dataset; repos of plain .npy files fall back to the course format."""
    where = f"hub:{repo}"
    if not repo or repo.count("/") > 1:
        raise DatasetError(f"{where}: expected hub:OWNER/NAME")
    hf = _hf_datasets()
    try:
        ds = hf.load_dataset(repo, revision=revision, split=split)
    except Exception as e:  # the library raises many types: not found, offline, no data files, bad split...
        images, labels, names = _hub_npy(repo, revision, image_column, label_column, context_names, e)
        return resize_array(images, resolution), labels, names
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise DatasetError(f"{where}: no column {' or '.join(map(repr, missing))}; it has {ds.column_names} "
                           "(set image_column / label_column)")
    if len(ds) == 0:
        raise DatasetError(f"{where}: split {split!r} is empty")
    labels, names = _hub_labels(ds, label_column, context_names, where)
    images = _hub_images(ds[image_column], image_column, resolution, where)
    return images, labels, names


def load_dataset(spec: str = "default", *, resolution: int = 16, context_names: list[str] | None = None,
                 labels_path: str | None = None, image_column: str = "image", label_column: str = "label",
                 revision: str | None = None, split: str = "train", hflip: bool = True,
                 downscale: str = "palette") -> SpriteDataset:
    """Load any supported dataset (see the module docstring) at the training resolution.

    downscale applies to the bundled set (see default_sprites).
    """
    if resolution < 1:
        raise DatasetError(f"resolution: must be positive, got {resolution}")
    if spec == "default":
        images, labels, names = default_sprites(resolution, downscale)
        names = _names(context_names, labels.shape[1], names, str(DEFAULT_NPZ))
    elif spec.startswith("hub:"):
        images, labels, names = load_hub(spec[4:], revision, split, image_column, label_column, context_names,
                                         resolution)
    elif os.path.isdir(spec):
        images, labels, names = load_image_folder(spec, resolution, context_names)
    elif spec.endswith(".npy"):
        images, labels, names = load_course_arrays(spec, labels_path, context_names)
    elif not os.path.exists(spec):
        raise DatasetError(f"{spec}: dataset not found (use 'default', an images .npy, a folder, or hub:OWNER/NAME)")
    else:
        raise DatasetError(f"{spec}: unsupported dataset file (expected an images .npy or a folder)")
    return _make(images, labels, names, resolution, hflip)


# ----------------------------------------------------------------------------- command line

def _name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated context names")
    return names


def add_dataset_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the --dataset flags that every entry point shares."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset", default="default",
                   help="'default', images .npy (course format), image folder, or hub:OWNER/NAME")
    g.add_argument("--dataset_labels", default=None, help="labels .npy for a .npy dataset (default: the sibling)")
    g.add_argument("--context_names", type=_name_list, default=None,
                   help="comma-separated context names, e.g. hero,non-hero,food,spell,side-facing")
    g.add_argument("--image_column", default="image", help="Hub dataset image column")
    g.add_argument("--label_column", default="label", help="Hub dataset label column")
    g.add_argument("--dataset_revision", default=None, help="Hub dataset revision (commit sha, branch or tag)")
    g.add_argument("--dataset_split", default="train", help="Hub dataset split")
    g.add_argument("--no_hflip", action="store_true", help="turn off random horizontal flips")
    g.add_argument("--resolution", type=int, default=16, help="training resolution in pixels")
    g.add_argument("--downscale", choices=DOWNSCALES, default="palette",
                   help="bundled set at 16 px: keep the 32 px art's palette, or average 2x2 areas")
    return parser


def dataset_from_args(args: argparse.Namespace) -> SpriteDataset:
    """load_dataset with the flags added by add_dataset_args."""
    return load_dataset(args.dataset, resolution=args.resolution, context_names=args.context_names,
                        labels_path=args.dataset_labels, image_column=args.image_column,
                        label_column=args.label_column, revision=args.dataset_revision,
                        split=args.dataset_split, hflip=not args.no_hflip, downscale=args.downscale)
