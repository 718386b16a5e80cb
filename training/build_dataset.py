"""Build the default sprite dataset from Debian's Dungeon Crawl Stone Soup tiles.

    python -m training.build_dataset                  # fetch with apt, write data/
    python training/build_dataset.py --cache DIR      # reuse the downloads in DIR

The two Debian files are fetched by apt, checked by sha256 and cached, so a rerun needs
no network and yields the same bytes; the array hash is printed and compared with
ARRAYS_SHA256. Food also comes from Crossfire because Crawl has only ~25 food tiles.
"""

import argparse
import hashlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from model.images import make_grid, upscale
from training.sprite_data import BACKGROUND, DEFAULT_NPZ

CONTEXTS = ["hero", "non-hero", "food", "spell", "item"]
ARRAYS_SHA256 = "860a2bd99a0d51f5cb9881c354056b8b72b752e8b0aec98968064796072995d4"
MIN_COVERAGE = 0.06  # tiles with fewer opaque pixels than this are overlays or slivers
N_DOLLS = 600  # paper-doll heroes; the game has only ~135 player bodies
SEED = 1788


class Source(NamedTuple):
    package: str
    version: str
    filename: str
    sha256: str
    kind: str  # "source": apt-get source; "binary": apt-get download


CRAWL = Source("crawl", "2:0.28.0-1.1", "crawl_0.28.0.orig.tar.xz",
               "5a6be168f8888b84bdb199184ca20bd8636f77ba7e9e0124ebee8850092f2f47", "source")
CROSSFIRE = Source("crossfire-common", "1.75.0-5", "crossfire-common_1.75.0-5_all.deb",
                   "076043330673518c1492a4c4eb57128fb9f098bab853aaf04ac6641b6a24d3c8", "binary")
TILE_ROOT = "stone_soup-0.28.0/source/rltiles/"
FACES_FILE = "./usr/share/games/crossfire/crossfire.0"

# ----------------------------------------------------------------------------- labels

MON_SKIP = {"tentacles", "statues", "player", "mutantbeast", "panlord"}  # segments, statues, part overlays
ITEM_DIRS = {"weapon", "armour", "potion", "scroll", "wand", "ring", "amulet", "staff", "book", "misc", "rod"}
# effect/ holds spell visuals but also thrown objects (bolt1 is a crossbow bolt, bolt01 a magic one)
# and map-area markers, which are not spells
NOT_SPELL = re.compile(r"^(arrow|bolt\d$|boomerang|javelin|needle|poison_arrow|stone_arrow|.*sling_bullet|iron_shot"
                       r"|throwing_net|net_trap|stone\d|rock|pie\d|indicator|halo_range|sanctuary|silenced"
                       r"|cloud_.*(dust|smoke))")
MONSTER_ICON = re.compile(r"summon|elementals|porkalator|brain_feed|polymorph|blink_other|haste_other|awaken_vines"
                          r"|sticky_flame_range")
# Crossfire's solid foods (no drinks, flowers, pipe-weed or text placeholders) plus edible organs like Crawl's chunks
CROSSFIRE_FOOD = re.compile(
    r"^\./arch/(food/(produce/)?(apple|apple_half|apple_fourth|apple_eighth|bag_popcorn|cabbage|cake|caramel"
    r"|carrot|ch_burger|chocolate|drag_steak|fish_\d|food|fried_egg|haggis|leg_mutton|loaf|mint|mushroom_\d"
    r"|onion|orange|orcchop|pear|potato|roast_bird|tomato|tomato_big|waybread)"
    r"|flesh/generic/(heart|liver|tongue))\.111$")
DOLL_BASES = re.compile(r"^(human\d?|elf|deep_elf|dwarf|deep_dwarf|demigod|orc|lorc|vampire|gnoll\d?)_[mf]\d?$")
# paper-doll layers in the game's drawing order, with how often each is worn
DOLL_LAYERS = [("cloak", 0.3), ("base", 1.0), ("boots", 0.7), ("legs", 0.7), ("body", 0.9),
               ("gloves", 0.4), ("hair|head", 0.9), ("beard", 0.3), ("hand1", 0.85), ("hand2", 0.5)]


def context_of(rel: str) -> str | None:
    """Context of a Crawl tile from its folder (path relative to rltiles/), or None to leave it out."""
    parts = rel.split("/")
    name = parts[-1]
    if not name.endswith(".png") or name.startswith(("i-", ".")):  # i-*: overlay icons; ._*: macOS forks
        return None
    stem, top = name[:-4], parts[0]
    if top == "player":
        return "hero" if parts[1:2] == ["base"] and len(parts) == 3 and stem != "shadow" else None
    if top == "mon":
        return None if len(parts) < 3 or parts[1] in MON_SKIP or "statue" in stem else "non-hero"
    if rel.startswith(("item/food/", "UNUSED/food/")):
        return "food" if len(parts) == 3 and not stem.startswith("bone") else None
    if rel.startswith("gui/spells/"):  # icons of summons and some monster spells are monster pictures
        return "spell" if len(parts) == 4 and parts[2] != "summoning" and not MONSTER_ICON.search(stem) else None
    if top == "effect":
        return None if NOT_SPELL.match(stem) else "spell"
    skip_items = {"brands", "uncollected_runes"}  # overlay icons; dark silhouettes of the runes
    if top == "item" and len(parts) >= 3 and parts[1] in ITEM_DIRS and not skip_items & set(parts):
        return "item"
    return None


# ----------------------------------------------------------------------------- pixels

def decode(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 4) uint8 RGBA. Opaque tiles lose a flat white/blue/RLTiles-key surround."""
    im = Image.open(io.BytesIO(data))
    had_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    rgba = np.array(im.convert("RGBA"))
    if not had_alpha:
        rgba[_border_fill(rgba[..., :3])] = 0
    return rgba


def _border_fill(rgb: np.ndarray) -> np.ndarray:
    """Mask of key-coloured pixels connected to the border (a few Crawl tiles have no alpha channel)."""
    keys = [(255, 255, 255), (97, 77, 253), (71, 108, 108)]  # 71,108,108 is RLTiles' transparent colour
    key = next((k for k in keys if (rgb[0, 0] == k).all()), None)
    if key is None:
        return np.zeros(rgb.shape[:2], bool)
    same = (rgb == key).all(-1)
    mask = same & ~np.pad(np.ones((rgb.shape[0] - 2, rgb.shape[1] - 2), bool), 1)  # key pixels on the border
    while True:  # grow through 4-neighbours of the key colour
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        grown &= same
        if (grown == mask).all():
            return mask
        mask = grown


def to_square(rgba: np.ndarray, min_side: int = 32) -> np.ndarray:
    """Pad to a square (at least min_side), centred across, standing on the bottom edge (tall monsters)."""
    h, w = rgba.shape[:2]
    side = max(h, w, min_side)
    out = np.zeros((side, side, 4), np.uint8)
    x = (side - w) // 2
    out[side - h:, x:x + w] = rgba
    return out


def area_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Exact area-average resize of a square float image (2x2 mean for 32->16; also handles 48->32)."""
    side = img.shape[0]
    edges = np.arange(size + 1) * side / size
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(side)[None, :]
    weights = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None) * size / side  # (size, side)
    return np.einsum("ij,jkc,lk->ilc", weights, img, weights)


def render(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """RGBA tile -> (32 px RGB, 16 px RGB, opaque fraction).

    Compositing onto the background before averaging equals averaging premultiplied colour and
    alpha and compositing after, so partly covered pixels blend correctly and 1-pixel outlines
    turn into soft edges instead of breaking up as they do when every other pixel is taken.
    """
    sq = to_square(rgba)
    alpha = sq[..., 3:4] / 255.0
    rgb = sq[..., :3] * alpha + np.array(BACKGROUND, float) * (1 - alpha)
    coverage = float((sq[..., 3] >= 128).mean())
    to_u8 = lambda x: np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(area_resize(rgb, 32)), to_u8(area_resize(rgb, 16)), coverage


def paper_dolls(tiles: dict[str, bytes], n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Random adventurers from the game's paper-doll layers (how Crawl draws the player)."""
    layer_files = {}
    for layer in {name for spec, _ in DOLL_LAYERS for name in spec.split("|")}:
        folder = f"player/{layer}/"
        files = [r for r in sorted(tiles) if r.startswith(folder) and r.endswith(".png")
                 and not r.split("/")[-1].startswith("i-")]
        if layer == "base":
            files = [r for r in files if DOLL_BASES.match(r.split("/")[-1][:-4])]
        layer_files[layer] = files
    rng = np.random.default_rng(seed)
    dolls, cache = [], {}
    for _ in range(n):
        canvas, parts, male = np.zeros((32, 32, 4), np.uint8), [], False
        for spec, p in DOLL_LAYERS:
            layer = spec.split("|")[rng.integers(len(spec.split("|")))]
            if not layer_files[layer] or rng.random() >= p or (layer == "beard" and not male):
                continue
            rel = layer_files[layer][rng.integers(len(layer_files[layer]))]
            layer_img = cache[rel] if rel in cache else cache.setdefault(rel, decode(tiles[rel]))
            if layer_img.shape[:2] != (32, 32):
                continue
            male = male or (layer == "base" and re.search(r"_m\d?\.png$", rel) is not None)
            canvas = np.array(Image.alpha_composite(Image.fromarray(canvas), Image.fromarray(layer_img)))
            parts.append(rel[len("player/"):-4])
        dolls.append(("doll:" + "+".join(parts), canvas))
    return dolls


# ----------------------------------------------------------------------------- build

def build(tiles: dict[str, bytes], extra_food: dict[str, bytes], n_dolls: int = N_DOLLS,
          seed: int = SEED, log=print) -> dict[str, np.ndarray]:
    """Label, render, filter and deduplicate tiles into the dataset arrays.

    tiles: Crawl PNGs by path relative to rltiles/; extra_food: other food PNGs by source name.
    A sprite counts once: its mirror image is a duplicate, since training flips at random.
    """
    items = [(f"crawl:{rel}", ctx, tiles[rel]) for rel in sorted(tiles) if (ctx := context_of(rel)) is not None]
    items += [(name, "food", extra_food[name]) for name in sorted(extra_food)]
    decoded = [(name, ctx, decode(data)) for name, ctx, data in items]
    decoded += [(name, "hero", rgba) for name, rgba in paper_dolls(tiles, n_dolls, seed)]
    decoded.sort(key=lambda it: CONTEXTS.index(it[1]))  # stable: keeps path order within a context
    seen, rows, dropped = set(), [], {"near-empty": 0, "duplicate": 0}
    for i, (name, ctx, rgba) in enumerate(decoded):
        img32, img16, coverage = render(rgba)
        key = min(img16.tobytes(), img16[:, ::-1].tobytes())
        if coverage < MIN_COVERAGE:
            dropped["near-empty"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            rows.append((name, ctx, img32, img16))
        if (i + 1) % 500 == 0 or i + 1 == len(decoded):
            log(f"  rendered {i + 1}/{len(decoded)} tiles, kept {len(rows)}")
    log(f"  dropped {dropped['near-empty']} near-empty and {dropped['duplicate']} duplicate tiles")
    labels = np.eye(len(CONTEXTS), dtype=np.uint8)[[CONTEXTS.index(r[1]) for r in rows]]
    return {
        "images16": np.stack([r[3] for r in rows]) if rows else np.zeros((0, 16, 16, 3), np.uint8),
        "images32": np.stack([r[2] for r in rows]) if rows else np.zeros((0, 32, 32, 3), np.uint8),
        "labels": labels,
        "context_names": np.array(CONTEXTS),
        "sources": np.array([r[0] for r in rows]),
    }


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Hash of names, dtypes, shapes and bytes: equal hashes mean equal datasets."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed but with fixed zip timestamps, so rebuilding gives the same bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def contact_sheet(images: np.ndarray, cols: int = 12, scale: int = 3, limit: int = 144) -> Image.Image:
    """Grid of sprites, evenly sampled when there are more than `limit`, upscaled without smoothing."""
    idx = np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(int)
    return upscale(make_grid(images[idx], ncols=cols, background=(64, 64, 64)), scale)  # dark 1 px grid lines


# ----------------------------------------------------------------------------- sources

def derived_apt_sources(etc: Path = Path("/etc/apt")) -> str:
    """The machine's enabled apt sources as deb822 stanzas that also offer source packages."""
    stanzas = []
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        for block in re.split(r"\n\s*\n", f.read_text()):
            fields, key = {}, None
            for line in block.splitlines():
                if line[:1] in (" ", "\t") and key:  # continuation line, e.g. an inline Signed-By key
                    fields[key] += "\n" + line
                elif ":" in line and not line.startswith("#"):
                    key, _, value = line.partition(":")
                    key = key.strip()
                    fields[key] = value.strip()
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes").lower() != "no":
                stanzas.append({**fields, "Types": "deb deb-src"})
    for f in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        for line in f.read_text().splitlines() if f.exists() else []:
            m = re.match(r"^deb\s+(\[(.*?)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line.strip())
            if m:
                opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
                stanza = {"Types": "deb deb-src", "URIs": m.group(3), "Suites": m.group(4),
                          "Components": m.group(5)}
                if "signed-by" in opts:
                    stanza["Signed-By"] = opts["signed-by"]
                stanzas.append(stanza)
    field = lambda k, v: f"{k}:{v}\n" if v.startswith("\n") else f"{k}: {v}\n"  # noqa: E731
    return "\n".join("".join(field(k, v) for k, v in s.items() if v) for s in stanzas)


def fetch(sources: list[Source], cache: Path, log=print) -> dict[str, Path]:
    """Download with apt into `cache` (reused when the sha256 matches), verifying each file."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [s for s in sources if not (cache / s.filename).exists()]
    if missing:
        with tempfile.TemporaryDirectory(prefix="apt-src-") as tmp:
            tmp = Path(tmp)
            (tmp / "parts").mkdir()
            (tmp / "lists" / "partial").mkdir(parents=True)
            (tmp / "sources.list").write_text("")
            (tmp / "parts" / "derived.sources").write_text(derived_apt_sources())
            opts = [f"-oDir::Etc::SourceList={tmp / 'sources.list'}", f"-oDir::Etc::SourceParts={tmp / 'parts'}",
                    f"-oDir::State::Lists={tmp / 'lists'}", f"-oDir::Cache={tmp / 'cache'}"]
            if os.geteuid() == 0:
                opts.append("-oAPT::Sandbox::User=root")  # apt's own user may not write to our folders
            log("  apt-get update (temporary configuration with deb-src entries)")
            subprocess.run(["apt-get", *opts, "-q", "update"], capture_output=True, text=True)
            for s in missing:
                verb = ["source", "--download-only"] if s.kind == "source" else ["download"]
                log(f"  apt-get {' '.join(verb)} {s.package}={s.version}")
                # exit status is ignored: a missing Debian patch tarball fails the run but not the orig tarball
                r = subprocess.run(["apt-get", *opts, "-q", *verb, f"{s.package}={s.version}"],
                                   cwd=cache, capture_output=True, text=True)
                if not (cache / s.filename).exists():
                    raise SystemExit(f"apt could not fetch {s.filename}:\n{r.stderr.strip()}")
    paths = {}
    for s in sources:
        with open(cache / s.filename, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != s.sha256:
            raise SystemExit(f"{cache / s.filename}: sha256 {digest} != expected {s.sha256}")
        log(f"  {s.filename}: sha256 ok")
        paths[s.package] = cache / s.filename
    return paths


def read_crawl_tiles(tarball: Path) -> dict[str, bytes]:
    """Every PNG under rltiles/ in the orig tarball, by path relative to rltiles/ (nothing else is read)."""
    tiles = {}
    with tarfile.open(tarball, "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.startswith(TILE_ROOT) and m.name.endswith(".png"):
                tiles[m.name[len(TILE_ROOT):]] = tf.extractfile(m).read()
    return tiles


def read_crossfire_food(deb: Path) -> dict[str, bytes]:
    """Food faces from Crossfire's image archive: 'IMAGE <size> <name>' lines, each followed by a PNG."""
    data = deb.read_bytes()
    assert data.startswith(b"!<arch>\n"), f"{deb}: not a .deb"
    pos, faces = 8, b""
    while pos < len(data):  # ar members: 60-byte header, body padded to even length
        name, size = data[pos:pos + 16].strip().decode(), int(data[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tf:
                faces = tf.extractfile(FACES_FILE).read()
        pos += 60 + size + size % 2
    food, pos = {}, 0
    while m := re.compile(rb"IMAGE (\d+) (\S+)\n").match(faces, pos):
        size, name = int(m.group(1)), m.group(2).decode()
        if CROSSFIRE_FOOD.match(name):
            food[f"crossfire:{name[2:]}"] = faces[m.end():m.end() + size]
        pos = m.end() + size
    return food


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_NPZ.parent, help="output folder (data/)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sprite-diffusion" / "debian",
                   help="where apt downloads go; files already there with the right sha256 are reused")
    args = p.parse_args(argv)
    t0 = time.time()
    print(f"[1/4] sources: {CRAWL.package} {CRAWL.version}, {CROSSFIRE.package} {CROSSFIRE.version}")
    paths = fetch([CRAWL, CROSSFIRE], args.cache)
    print("[2/4] reading tiles")
    tiles = read_crawl_tiles(paths[CRAWL.package])
    food = read_crossfire_food(paths[CROSSFIRE.package])
    print(f"  {len(tiles)} Crawl tiles, {len(food)} Crossfire food faces")
    print(f"[3/4] labelling, rendering, {N_DOLLS} paper-doll heroes")
    arrays = build(tiles, food)
    print("[4/4] writing")
    args.out.mkdir(parents=True, exist_ok=True)
    npz = args.out / DEFAULT_NPZ.name
    save_npz(npz, arrays)
    sheets = args.out / "contact_sheets"
    sheets.mkdir(exist_ok=True)
    counts = arrays["labels"].sum(0)
    for k, name in enumerate(CONTEXTS):
        contact_sheet(arrays["images16"][arrays["labels"][:, k] == 1]).save(sheets / f"{name}.png")
    digest = arrays_sha256(arrays)
    print("counts: " + ", ".join(f"{n} {c}" for n, c in zip(CONTEXTS, counts, strict=True)) + f", total {counts.sum()}")
    print(f"wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB) and {sheets}/*.png")
    print(f"arrays sha256: {digest} ({'matches' if digest == ARRAYS_SHA256 else 'DIFFERS from'} ARRAYS_SHA256)")
    print(f"time: {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
