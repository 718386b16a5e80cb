"""The "more food" arm of the food study (docs/study.md): the bundled sprites plus NetHack's food tiles.

    python -m studies.more_food                       # fetch NetHack's tiles with apt (cached), write runs/data/
    accelerate launch --config_file training/configs/cpu.yaml training/train.py \\
        --dataset runs/data/sprites_morefood.npy --context_names hero,non-hero,food,spell,item ...  # the arm

Food is the bundled set's smallest context (64 of 2,507 sprites) and the one the model draws worst. NetHack's
object tiles (Debian's `nethack` source package, NetHack General Public License, the tiles the second set is built
from: docs/dataset-nethack.md) hold 33 comestibles; the ones that read as food on their own are added here with
the food label. They are native 16 px pixel art with a dark drop shadow, drawn smaller in the tile than the
Crawl and Crossfire food (docs/dataset.md). The bundled set is not changed: the arm trains on a course-format
.npy pair written beside the run, so it is two flags away from the recipe: --dataset, and --context_names
because a .npy pair holds no names (without it the fifth context would be the course's "side-facing").
"""

import argparse
from pathlib import Path

import numpy as np

from model.images import make_grid, upscale
from model.sprites import default_sprites
from training.build_dataset import fetch
from training.build_nethack_dataset import NETHACK, parse_tiles, read_tarball

# NetHack's comestibles that look like food without a caption. Left out: the globs (coloured puddles), the tin,
# the K-, C-, cram and food rations (labelled boxes), the corpse (a generic heap) and the tripe ration.
FOOD_TILES = ["egg", "meatball", "meat stick", "huge chunk of meat", "meat ring", "kelp frond", "eucalyptus leaf",
              "apple", "orange", "pear", "melon", "banana", "carrot", "sprig of wolfsbane", "clove of garlic",
              "slime mold", "lump of royal jelly", "cream pie", "candy bar", "fortune cookie", "pancake",
              "lembas wafer"]
FOOD = "food"


def pick_food(tiles: list[tuple[str, np.ndarray]], names: list[str] = FOOD_TILES) -> list[tuple[str, np.ndarray]]:
    """The named tiles, in the order of ``names``; every name must be found exactly once."""
    found = {}
    for name, img in tiles:
        if name in names:
            if name in found:
                raise ValueError(f"tile {name!r} appears twice")
            found[name] = img
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"tiles not found: {', '.join(missing)}")
    return [(n, found[n]) for n in names]


def with_extra(images: np.ndarray, labels: np.ndarray, context_names: list[str],
               extra: list[np.ndarray], context: str = FOOD) -> tuple[np.ndarray, np.ndarray]:
    """The sprites and one-hot labels with ``extra`` appended under ``context``."""
    one_hot = np.zeros((len(extra), labels.shape[1]), labels.dtype)
    one_hot[:, context_names.index(context)] = 1
    return np.concatenate([images, np.stack(extra)]), np.concatenate([labels, one_hot])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/data"), help="where the .npy pair and a sheet go")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sprite-diffusion" / "debian",
                   help="where apt downloads go; a file already there with the right sha256 is reused")
    args = p.parse_args(argv)
    tiles, _ = read_tarball(fetch([NETHACK], args.cache)[NETHACK.package])
    food = pick_food(parse_tiles(tiles["objects.txt"]))
    images, labels, names = default_sprites(16, "palette")
    images, labels = with_extra(images, labels, names, [img for _, img in food])
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "sprites_morefood.npy", images)
    np.save(args.out / "sprite_labels_nc_morefood.npy", labels)
    food_rows = labels[:, names.index(FOOD)] > 0
    upscale(make_grid(images[food_rows], ncols=16), 4).save(args.out / "food_morefood.png")
    counts = ", ".join(f"{n} {int(c)}" for n, c in zip(names, labels.sum(0), strict=True))
    print(f"wrote {args.out}/sprites_morefood.npy {images.shape} and its labels ({counts}); "
          f"{len(food)} NetHack food tiles added; every food sprite: {args.out / 'food_morefood.png'}\n"
          f"train with --dataset {args.out / 'sprites_morefood.npy'} --context_names {','.join(names)}")


if __name__ == "__main__":
    main()
