"""The NetHack dataset build: tile parsing, label rules and filtering on tiny synthetic tile files,
plus checks of the committed data/nethack/ arrays and their judge. No network, no apt."""

import json
from pathlib import Path

import numpy as np
import pytest

from training import build_nethack_dataset as nh
from training.build_dataset import arrays_sha256
from training.judge import fingerprint
from training.sprite_data import BACKGROUND, load_course_arrays, load_dataset

DATA = Path(nh.__file__).resolve().parents[1] / "data" / "nethack"
COUNTS = {"monster": 393, "weapon": 68, "item": 213, "effect": 86}  # as in docs/dataset-nethack.md
PALETTE = ". = (71, 108, 108)\nA = (0, 0, 0)\nB = (255, 0, 0)\nC = (0, 0, 255)\nD = (255, 255, 255)\n"


def random_rows(seed: int) -> list[str]:
    """16 rows of 16 letters: a random picture that is not its own mirror image."""
    rng = np.random.default_rng(seed)
    rows = ["".join(rng.choice(list(".ABC"), 16)) for _ in range(16)]
    return ["A" + r[1:15] + "B" for r in rows]  # left column black, right column red: never symmetric


def tile_file(tiles: list[tuple[str, list[str]]]) -> str:
    body = "".join(f"# tile {i} ({name})\n{{\n" + "".join(f"  {r}\n" for r in rows) + "}\n"
                   for i, (name, rows) in enumerate(tiles))
    return PALETTE + body


def test_parse_tiles_colours_and_transparency():
    rows = ["." * 16] * 15 + ["AB" + "C" * 14]
    [(name, img)] = nh.parse_tiles(tile_file([("giant ant", rows)]))
    assert name == "giant ant" and img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == BACKGROUND  # "." is see-through
    assert [tuple(p) for p in img[15, :3]] == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def test_parse_tiles_rejects_bad_tiles():
    with pytest.raises(ValueError, match="not 16x16"):
        nh.parse_tiles(tile_file([("short", ["A" * 16] * 15)]))
    text = tile_file([("a", ["A" * 16] * 16)]).replace("# tile 0", "# tile 5")
    with pytest.raises(ValueError, match="out of order"):
        nh.parse_tiles(text)


def test_object_classes_follow_the_anchors():
    names = ["strange object"] + [n for anchor, _ in nh.OBJECT_CLASSES for n in (anchor, anchor + " 2")]
    classes = nh.object_classes(names)
    assert classes[0] is None
    assert classes[1:5] == ["weapon", "weapon", "armour", "armour"]
    assert classes[-1] == "venom"
    with pytest.raises(ValueError, match="large box"):
        nh.object_classes([n for n in names if n != "large box"])


@pytest.mark.parametrize("file, name, context", [
    ("monsters.txt", "giant ant", "monster"),
    ("monsters.txt", "invisible monster", None),
    ("other.txt", "explosion fiery 3", "effect"),
    ("other.txt", "zap 7 3", "effect"),
    ("other.txt", "dig beam", "effect"),
    ("other.txt", "shield2", "effect"),
    ("other.txt", "swallow top left", None),
    ("other.txt", "boom left", None),
    ("other.txt", "warning 0", None),
    ("other.txt", "tree", None),
    ("other.txt", "sub mine walls 3", None),
])
def test_contexts_of_names(file, name, context):
    assert nh.contexts_of(file, [name]) == [context]


def test_object_contexts():
    names = [anchor for anchor, _ in nh.OBJECT_CLASSES]
    got = dict(zip([c for _, c in nh.OBJECT_CLASSES], nh.contexts_of("objects.txt", names), strict=True))
    assert got["weapon"] == "weapon"
    assert all(got[c] == "item" for c in ("armour", "ring", "amulet", "potion", "scroll", "spellbook", "wand"))
    assert all(got[c] is None for c in ("tool", "food", "coin", "gem", "boulder", "venom"))


def test_build_labels_filters_and_orders():
    ant = random_rows(1)
    files = {
        "monsters.txt": tile_file([("giant ant", ant), ("mirror ant", [r[::-1] for r in ant]),
                                   ("flat", ["C" * 16] * 16), ("invisible monster", random_rows(2))]),
        "objects.txt": tile_file([(name, random_rows(10 + i)) for i, (name, _) in enumerate(nh.OBJECT_CLASSES)]),
        "other.txt": tile_file([("vertical beam", ["." * 7 + "DD" + "." * 7] * 16),  # white on white: blank
                                ("explosion fiery 0", random_rows(3)), ("tree", random_rows(4))]),
    }
    logs = []
    arrays = nh.build(files, log=logs.append)
    names = [str(n) for n in arrays["names"]]
    assert names == ["monsters:0:giant ant", "objects:0:arrow", "objects:1:leather hat / elven leather helm",
                     "objects:2:wooden / adornment", "objects:3:circular / amulet of ESP",
                     "objects:6:ruby / gain ability", "objects:7:ZELGO MER / enchant armor",
                     "objects:8:parchment / dig", "objects:9:glass / light", "other:1:explosion fiery 0"]
    assert arrays["images"].shape == (10, 16, 16, 3) and arrays["images"].dtype == np.uint8
    assert arrays["labels"].dtype == np.uint8 and (arrays["labels"].sum(1) == 1).all()
    assert arrays["labels"].argmax(1).tolist() == [0, 1] + [2] * 7 + [3]
    assert any("2 flat" in line and "vertical beam" in line for line in logs)
    assert any("1 duplicate" in line for line in logs)  # the mirror image


def test_detail_of_flat_and_busy_tiles():
    flat = np.full((16, 16, 3), 255, np.uint8)
    assert nh.detail(flat) == 0.0
    flat[0, :10] = 0
    assert nh.detail(flat) == pytest.approx(10 / 256)


# ----------------------------------------------------------------------------- committed files

def test_committed_arrays_load_with_documented_classes():
    assert (DATA / "context_names.txt").read_text().split() == nh.CONTEXTS == list(COUNTS)
    ds = load_dataset(str(DATA / "sprites_nethack.npy"), context_names=nh.CONTEXTS)
    n = sum(COUNTS.values())
    assert len(ds) == n and tuple(ds.images.shape) == (n, 3, 16, 16) and ds.context_names == nh.CONTEXTS
    images, labels, _ = load_course_arrays(DATA / "sprites_nethack.npy", context_names=nh.CONTEXTS)
    assert images.shape == (n, 16, 16, 3) and images.dtype == np.uint8 and labels.shape == (n, len(COUNTS))
    assert (labels.sum(1) == 1).all()
    assert dict(zip(nh.CONTEXTS, labels.sum(0).tolist(), strict=True)) == COUNTS
    assert arrays_sha256({"images": images, "labels": labels}) == nh.ARRAYS_SHA256
    sources = (DATA / "sprite_sources.txt").read_text().splitlines()
    assert [s.split("\t")[0] for s in sources] == [nh.CONTEXTS[k] for k in labels.argmax(1)]


def test_committed_judge_matches_the_arrays():
    config = json.loads((DATA.parents[1] / "training" / "judges" / "nethack" / "config.json").read_text())
    images = np.load(DATA / "sprites_nethack.npy")
    labels = np.load(DATA / "sprite_labels_nc_nethack.npy").argmax(1)
    assert config["context_names"] == nh.CONTEXTS
    assert config["dataset_fingerprint"] == fingerprint(images, labels)
