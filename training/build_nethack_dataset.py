"""Build a second sprite dataset from NetHack's 16x16 tiles (Debian source package `nethack`).

    python -m training.build_nethack_dataset                # fetch with apt, write data/nethack/
    python training/build_nethack_dataset.py --cache DIR    # reuse the download in DIR

It exists to check that the training recipe works on data it was not tuned on. NetHack ships
its tiles as text (win/share/{monsters,objects,other}.txt): a palette, then for every tile a
comment naming it and 16 rows of 16 palette letters. The tiles are used at their native size
(no resampling); the letter "." is the transparent colour and becomes the background.
Labels come from the files and the tile names by the rules below. The upstream tarball is
fetched by apt, checked by sha256 and cached; the array hash is printed and compared with
ARRAYS_SHA256, so a rebuild can be checked byte for byte.
"""

import argparse
import re
import tarfile
import time
from pathlib import Path

import numpy as np

from model.images import make_grid, upscale  # noqa: E402
from training.build_dataset import Source, arrays_sha256, fetch  # noqa: E402
from training.sprite_data import BACKGROUND  # noqa: E402

CONTEXTS = ["monster", "weapon", "item", "effect"]
ARRAYS_SHA256 = "90b94319b3caad6abc38c11e466193ec251b98df56da68fd0da8f1b6563f3c10"
OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "nethack"
NETHACK = Source("nethack", "3.6.6-3", "nethack_3.6.6.orig.tar.gz",
                 "cfde0c3ab6dd7c22ae82e1e5a59ab80152304eb23fb06e3129439271e5643ed2", "source")
TILE_DIR = "NetHack-NetHack-3.6.6_Released/win/share/"
TILE_FILES = ["monsters.txt", "objects.txt", "other.txt"]
LICENSE_FILE = "NetHack-NetHack-3.6.6_Released/dat/license"
TRANSPARENT = "."  # palette letter of the see-through colour (71, 108, 108)
MIN_DETAIL = 0.06  # tiles where fewer pixels than this differ from the main colour are blank or flat

# ----------------------------------------------------------------------------- labels

# objects.txt lists objects in NetHack's class order. A class starts at the tile with this comment
# (unidentified appearance / real name) and runs until the next class starts; tile 0 is a placeholder.
OBJECT_CLASSES = [
    ("arrow", "weapon"), ("leather hat / elven leather helm", "armour"), ("wooden / adornment", "ring"),
    ("circular / amulet of ESP", "amulet"), ("large box", "tool"), ("tripe ration", "food"),
    ("ruby / gain ability", "potion"), ("ZELGO MER / enchant armor", "scroll"), ("parchment / dig", "spellbook"),
    ("glass / light", "wand"), ("gold piece", "coin"), ("white / dilithium crystal", "gem"),
    ("gray / luckstone", "stone"), ("boulder", "boulder"), ("statue", "statue"), ("heavy iron ball", "ball"),
    ("iron chain", "chain"), ("splash of venom / blinding venom", "venom"),
]
# Classes kept, by context. Armour and the magic classes share "item": as separate contexts the judge
# told armour from monsters and magic items only 65-85% of the time (cloaks, hats and boots look like
# creatures). Left out: tools, food (33 tiles), coins, gems (~11 distinct pictures), stones, boulders,
# statues, balls, chains and venom.
OBJECT_CONTEXT = {"weapon": "weapon", "armour": "item", "ring": "item", "amulet": "item", "potion": "item",
                  "scroll": "item", "spellbook": "item", "wand": "item"}
# other.txt: spell effects (beams, reflection shields, poison cloud, explosion pieces, zaps). Left out: the
# map (walls, floors, doors, furniture, traps; ~70 tiles, too varied for the judge: 72-83%), the boomerang
# arcs, the cursor, the engulfing borders and the warning digits.
EFFECT = re.compile(r"^(vertical|horizontal|left slant|right slant|dig|flash) beam$|^shield\d$|^poison cloud$"
                    r"|^explosion |^zap \d \d$")
NOT_MONSTERS = {"invisible monster"}  # the '?' marker for an unseen monster


def object_classes(names: list[str]) -> list[str | None]:
    """NetHack object class of each objects.txt tile, from the OBJECT_CLASSES anchors (all must appear, in order)."""
    out, current, nxt = [], None, 0
    for name in names:
        if nxt < len(OBJECT_CLASSES) and name == OBJECT_CLASSES[nxt][0]:
            current, nxt = OBJECT_CLASSES[nxt][1], nxt + 1
        out.append(current)
    if nxt < len(OBJECT_CLASSES):
        raise ValueError(f"objects.txt: class anchor {OBJECT_CLASSES[nxt][0]!r} not found after "
                         f"{OBJECT_CLASSES[nxt - 1][0] if nxt else 'the start'!r}")
    return out


def contexts_of(file: str, names: list[str]) -> list[str | None]:
    """Context of each tile of one tile file (None: left out)."""
    if file == "monsters.txt":
        return [None if n in NOT_MONSTERS else "monster" for n in names]
    if file == "objects.txt":
        return [OBJECT_CONTEXT.get(c) for c in object_classes(names)]
    if file == "other.txt":
        return ["effect" if EFFECT.match(n) else None for n in names]
    raise ValueError(f"unknown tile file {file}")


# ----------------------------------------------------------------------------- pixels

PALETTE_LINE = re.compile(r"^(\S) = \(\s*(\d+),\s*(\d+),\s*(\d+)\s*\)\s*$")
TILE_LINE = re.compile(r"^# tile (\d+) \((.*)\)\s*$")


def parse_tiles(text: str) -> list[tuple[str, np.ndarray]]:
    """A NetHack tile text file -> [(name, (16, 16, 3) uint8 RGB)], transparent pixels on BACKGROUND."""
    palette, tiles, rows, name = {}, [], None, None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if rows is None and (m := PALETTE_LINE.match(line)):
            palette[m.group(1)] = tuple(int(v) for v in m.group(2, 3, 4))
        elif m := TILE_LINE.match(line):
            if int(m.group(1)) != len(tiles):
                raise ValueError(f"line {n}: tile {m.group(1)} out of order (expected {len(tiles)})")
            name = m.group(2).strip()
        elif line == "{" and name is not None:
            rows = []
        elif line == "}" and rows is not None:
            if len(rows) != 16 or any(len(r) != 16 for r in rows):
                raise ValueError(f"line {n}: tile {name!r} is not 16x16")
            colours = {**palette, TRANSPARENT: BACKGROUND}
            tiles.append((name, np.array([[colours[c] for c in r] for r in rows], np.uint8)))
            rows, name = None, None
        elif rows is not None and line:
            rows.append(line)
    return tiles


def detail(img: np.ndarray) -> float:
    """Fraction of pixels that differ from the tile's most common colour (0 for a blank or flat tile)."""
    _, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    return 1.0 - counts.max() / counts.sum()


# ----------------------------------------------------------------------------- build

def build(files: dict[str, str], log=print) -> dict[str, np.ndarray]:
    """Tile texts by file name -> images (N, 16, 16, 3) uint8, one-hot labels (N, C) uint8, names (N,).

    Sprites are ordered by context, then file, then tile number. A sprite counts once: its mirror image
    is a duplicate too, since training flips at random. Flat or blank tiles are dropped.
    """
    items = []
    for file in TILE_FILES:
        tiles = parse_tiles(files[file])
        ctxs = contexts_of(file, [n for n, _ in tiles])
        items += [(ctx, f"{file[:-4]}:{i}:{n}", img) for i, ((n, img), ctx) in enumerate(zip(tiles, ctxs, strict=True))
                  if ctx is not None]
    items.sort(key=lambda it: CONTEXTS.index(it[0]))  # stable: keeps file and tile order within a context
    seen, rows, dropped = set(), [], {"flat": [], "duplicate": []}
    for ctx, name, img in items:
        key = min(img.tobytes(), img[:, ::-1].tobytes())
        if detail(img) < MIN_DETAIL:
            dropped["flat"].append(name)
        elif key in seen:
            dropped["duplicate"].append(name)
        else:
            seen.add(key)
            rows.append((ctx, name, img))
    for why, names in dropped.items():
        log(f"  dropped {len(names)} {why} tiles" + (f": {', '.join(names)}" if why == "flat" else ""))
    labels = np.eye(len(CONTEXTS), dtype=np.uint8)[[CONTEXTS.index(r[0]) for r in rows]]
    return {"images": np.stack([r[2] for r in rows]) if rows else np.zeros((0, 16, 16, 3), np.uint8),
            "labels": labels, "names": np.array([r[1] for r in rows])}


def read_tarball(path: Path) -> tuple[dict[str, str], str]:
    """The three tile files and the licence text from the upstream tarball."""
    wanted = {TILE_DIR + f: f for f in TILE_FILES} | {LICENSE_FILE: "license"}
    found = {}
    with tarfile.open(path, "r:gz") as tf:
        for m in tf:
            if m.name in wanted and m.isfile():
                found[wanted[m.name]] = tf.extractfile(m).read().decode("ascii")
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)}")
    return {f: found[f] for f in TILE_FILES}, found["license"]


def write(out: Path, arrays: dict[str, np.ndarray], license_text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "sprites_nethack.npy", arrays["images"], allow_pickle=False)
    np.save(out / "sprite_labels_nc_nethack.npy", arrays["labels"], allow_pickle=False)
    (out / "context_names.txt").write_text("\n".join(CONTEXTS) + "\n")
    classes = arrays["labels"].argmax(1)
    (out / "sprite_sources.txt").write_text(  # row i: context and file:tile:name of sprite i
        "".join(f"{CONTEXTS[c]}\t{n}\n" for c, n in zip(classes, arrays["names"], strict=True)))
    (out / "LICENSE-NGPL.txt").write_text(license_text)  # the licence asks for its text to travel with copies
    sheets = out / "contact_sheets"
    sheets.mkdir(exist_ok=True)
    for k, name in enumerate(CONTEXTS):
        grid = make_grid(arrays["images"][classes == k], ncols=20, background=(64, 64, 64))
        upscale(grid, 3).save(sheets / f"{name}.png", optimize=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (data/nethack/)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sprite-diffusion" / "debian",
                   help="where apt downloads go; a file already there with the right sha256 is reused")
    args = p.parse_args(argv)
    t0 = time.time()
    print(f"[1/3] source: {NETHACK.package} {NETHACK.version}")
    tiles, license_text = read_tarball(fetch([NETHACK], args.cache)[NETHACK.package])
    print("[2/3] labelling")
    arrays = build(tiles)
    print("[3/3] writing")
    write(args.out, arrays, license_text)
    counts = arrays["labels"].sum(0)
    print("counts: " + ", ".join(f"{n} {c}" for n, c in zip(CONTEXTS, counts, strict=True)) + f", total {counts.sum()}")
    digest = arrays_sha256({k: arrays[k] for k in ("images", "labels")})
    print(f"wrote {args.out}: sprites_nethack.npy {arrays['images'].shape}, sprite_labels_nc_nethack.npy, "
          "context_names.txt, sprite_sources.txt, LICENSE-NGPL.txt, contact_sheets/")
    print(f"arrays sha256: {digest} ({'matches' if digest == ARRAYS_SHA256 else 'DIFFERS from'} ARRAYS_SHA256)")
    print(f"time: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
