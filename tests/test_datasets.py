"""Loaders: the bundled set, the course's .npy pair, image folders and Hub datasets, and the
error messages for bad input. Fixtures are generated here; nothing reaches the network.

Hub coverage: `hub:OWNER/NAME` always calls datasets.load_dataset(OWNER/NAME, revision, split).
- Table datasets (parquet with Image and ClassLabel or list columns) are served from a folder
  named OWNER/NAME under the working directory, which datasets.load_dataset resolves before
  asking the Hub; everything after that call is the code a real Hub dataset runs.
- Repos of plain .npy files (the course's ashis-palai/sprites_image_dataset) are read from a
  hand-filled Hub cache with HF_HUB_OFFLINE=1 in a subprocess: load_dataset fails offline, as
  it does online for such repos, and the loader falls back to snapshot_download of the .npy pair.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import datasets as hf
import numpy as np
import pytest
import torch
from PIL import Image

from training import sprite_data as sd
from training.sprite_data import BACKGROUND, COURSE_CONTEXTS, DatasetError, load_dataset

REPO = Path(__file__).resolve().parents[1]


def course_pair(folder: Path, n: int = 6, size: int = 16) -> Path:
    """The course's file pair: (N, H, W, 3) uint8 sprites and (N, 5) float one-hot labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.eye(5, dtype=np.float64)[np.arange(n) % 5]
    np.save(folder / f"sprites_{n}_{size}x{size}.npy", images)
    np.save(folder / f"sprite_labels_nc_{n}_{size}x{size}.npy", labels)
    return folder / f"sprites_{n}_{size}x{size}.npy"


def rgba_image(size=(32, 32), colour=(200, 30, 30)) -> Image.Image:
    """A coloured square on a transparent surround."""
    arr = np.zeros((size[1], size[0], 4), np.uint8)
    arr[size[1] // 4:3 * size[1] // 4, size[0] // 4:3 * size[0] // 4] = (*colour, 255)
    return Image.fromarray(arr)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "sprites"
    for name in ("food", "hero"):
        (root / name).mkdir(parents=True)
    rgba_image().save(root / "hero" / "a.png")
    rgba_image((24, 24)).convert("RGB").save(root / "hero" / "b.jpg", quality=95)
    rgba_image((16, 20)).save(root / "food" / "c.webp", lossless=True)
    rgba_image((8, 8)).convert("P").save(root / "food" / "d.gif", transparency=0)
    (root / "food" / "notes.txt").write_text("ignored")
    (root / ".cache").mkdir()  # hidden folders are not contexts
    return root


# ----------------------------------------------------------------------------- loaders

def test_default_dataset():
    ds = load_dataset("default")
    n = len(ds)
    assert n > 2000 and ds.images.shape == (n, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.contexts.shape == (n, 5) and (ds.contexts.sum(1) == 1).all()
    assert ds.context_names == ["hero", "non-hero", "food", "spell", "item"]
    assert load_dataset("default", resolution=32).images.shape == (n, 3, 32, 32)
    assert load_dataset("default", resolution=8).images.shape == (n, 3, 8, 8)
    images, labels, names = sd.default_sprites(16)
    assert images.dtype == np.uint8 and images.shape == (n, 16, 16, 3) and labels.shape == (n, 5)
    assert torch.allclose(ds.images[0], torch.from_numpy(images[0]).permute(2, 0, 1).float() / 127.5 - 1)


def test_hflip_is_random_and_switchable():
    image = torch.zeros(1, 3, 4, 4)
    image[..., 0] = 1.0  # left column lit
    ds = sd.SpriteDataset(image, torch.ones(1, 1), ["x"])
    torch.manual_seed(0)
    lit = [int(ds[0][0][0, 0, 0] == 1) for _ in range(200)]
    assert 40 < sum(lit) < 160
    ds.hflip = False
    assert all(ds[0][0][0, 0, 0] == 1 for _ in range(50))
    assert len(ds) == 1 and torch.equal(ds[0][1], torch.ones(1))


def test_course_npy_with_sibling_labels(tmp_path):
    path = course_pair(tmp_path)
    ds = load_dataset(str(path), hflip=False)
    assert ds.images.shape == (6, 3, 16, 16) and ds.context_names == COURSE_CONTEXTS
    assert torch.equal(ds.contexts[5], torch.tensor([1.0, 0, 0, 0, 0]))
    raw = np.load(path)
    assert torch.allclose(ds.images[2], torch.from_numpy(raw[2]).permute(2, 0, 1).float() / 127.5 - 1)
    up = load_dataset(str(path), resolution=32)  # enlarging repeats pixels
    assert torch.equal(up.images[0, :, ::2, ::2], up.images[0, :, 1::2, 1::2])


def test_course_npy_multi_hot_named_labels(tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], np.uint8))
    ds = load_dataset(str(tmp_path / "x.npy"), labels_path=str(tmp_path / "y.npy"), context_names=["a", "b", "c"])
    assert ds.context_names == ["a", "b", "c"] and ds.contexts[2].tolist() == [1, 1, 1]
    assert ds.images.shape == (3, 3, 16, 16)


def test_image_folder(folder):
    ds = load_dataset(str(folder), hflip=False)
    assert ds.context_names == ["food", "hero"] and ds.images.shape == (4, 3, 16, 16)
    assert ds.contexts.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    white = torch.tensor(BACKGROUND).float() / 127.5 - 1
    hero_png = ds.images[2]  # 32 px red square on transparency, shrunk by area
    assert torch.allclose(hero_png[:, 0, 0], white) and hero_png[0, 8, 8] > 0.5 and hero_png[1, 8, 8] < -0.5
    gif = ds.images[1]  # 8 px palette GIF with a transparent index, enlarged
    assert torch.allclose(gif[:, 0, 0], white) and gif[1, 8, 8] < -0.5
    picked = load_dataset(str(folder), context_names=["hero"], resolution=32)
    assert picked.context_names == ["hero"] and picked.images.shape == (2, 3, 32, 32)


def make_hub_dir(root: Path, repo: str, columns: dict, features: hf.Features) -> None:
    """A folder named like a Hub repo, holding a parquet split as the Hub stores it."""
    (root / repo / "data").mkdir(parents=True)
    hf.Dataset.from_dict(columns, features=features).to_parquet(root / repo / "data" / "train-00000-of-00001.parquet")


@pytest.fixture
def hub_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def test_hub_classlabel(hub_root):
    images = [rgba_image((24, 24), (10 * i, 200, 0)) for i in range(5)]
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["hero", "food", "spell"])})
    make_hub_dir(hub_root, "tester/sprites", {"image": images, "label": [0, 1, 2, 1, 0]}, features)
    ds = load_dataset("hub:tester/sprites", split="train")
    assert ds.context_names == ["hero", "food", "spell"] and ds.images.shape == (5, 3, 16, 16)
    assert ds.contexts.argmax(1).tolist() == [0, 1, 2, 1, 0]
    renamed = load_dataset("hub:tester/sprites", context_names=["a", "b", "c"], resolution=24)
    assert renamed.context_names == ["a", "b", "c"] and renamed.images.shape == (5, 3, 24, 24)


def test_hub_array_images_and_multi_hot(hub_root):
    arrays = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8).tolist()
    hot = [[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]
    features = hf.Features({"pixels": hf.Array3D((16, 16, 3), "uint8"), "ctx": hf.List(hf.Value("uint8"))})
    make_hub_dir(hub_root, "tester/arrays", {"pixels": arrays, "ctx": hot}, features)
    ds = load_dataset("hub:tester/arrays", image_column="pixels", label_column="ctx", context_names=["x", "y", "z"])
    assert ds.contexts.tolist() == hot and ds.images.shape == (4, 3, 16, 16)
    expected = torch.tensor(arrays[1], dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(ds.images[1], expected)


@pytest.mark.slow
def test_hub_npy_repo_from_offline_cache(tmp_path):
    sha = "a" * 40
    repo = tmp_path / "hf" / "hub" / "datasets--tester--course"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    course_pair(repo / "snapshots" / sha, n=7)
    code = (
        "import sys\n"
        "from training.sprite_data import load_dataset, DatasetError\n"
        "d = load_dataset('hub:tester/course', revision=sys.argv[1])\n"
        "print('pinned', tuple(d.images.shape), d.context_names)\n"
        "print('main', len(load_dataset('hub:tester/course')))\n"
        "try:\n"
        "    load_dataset('hub:nobody/nothing')\n"
        "except DatasetError as e:\n"
        "    print('error', e)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code, sha], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"pinned (7, 3, 16, 16) {COURSE_CONTEXTS}" in out.stdout and "main 7" in out.stdout
    assert "error hub:nobody/nothing (revision main): could not load it" in out.stdout


def test_command_line_flags(tmp_path):
    path = course_pair(tmp_path)
    parser = sd.add_dataset_args(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", str(path), "--context_names", "a,b,c,d,e", "--no_hflip",
                              "--resolution", "32"])
    ds = sd.dataset_from_args(args)
    assert ds.context_names == ["a", "b", "c", "d", "e"] and not ds.hflip and ds.images.shape[-1] == 32
    assert sd.dataset_from_args(parser.parse_args([])).hflip


# ----------------------------------------------------------------------------- bad input

def save(path: Path, array) -> str:
    np.save(path, np.asarray(array))
    return str(path)


def test_missing_paths(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.npy: image file not found"):
        load_dataset(str(tmp_path / "nowhere.npy"))
    with pytest.raises(DatasetError, match="no_such_folder: dataset not found"):
        load_dataset(str(tmp_path / "no_such_folder"))
    images = save(tmp_path / "imgs.npy", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="gone.npy: label file not found"):
        load_dataset(images, labels_path=str(tmp_path / "gone.npy"))
    with pytest.raises(DatasetError, match="imgs.npy: no labels file found beside it"):
        load_dataset(images)
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="table.csv: unsupported dataset file"):
        load_dataset(str(tmp_path / "table.csv"))


def test_missing_bundled_file(tmp_path, monkeypatch):
    monkeypatch.setattr("model.sprites.DEFAULT_NPZ", tmp_path / "sprites_dcss.npz")
    with pytest.raises(DatasetError, match="sprites_dcss.npz: bundled dataset missing"):
        load_dataset("default")


def test_empty_folder_and_empty_context(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no context subfolders"):
        load_dataset(str(tmp_path / "empty"))
    (folder / "spell").mkdir()
    (folder / "spell" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"sprites/spell: context 'spell' has no images"):
        load_dataset(str(folder))
    with pytest.raises(DatasetError, match="sprites/item: context folder not found"):
        load_dataset(str(folder), context_names=["hero", "item"])


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "truncated"])
def test_corrupt_image(folder, content):
    if content == "truncated":
        content = (folder / "hero" / "a.png").read_bytes()[:60]
    (folder / "hero" / "broken.png").write_bytes(content)
    with pytest.raises(DatasetError, match=r"hero/broken.png: unreadable or corrupt image"):
        load_dataset(str(folder))


def test_corrupt_npy(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DatasetError, match="bad.npy: not a readable .npy image array"):
        load_dataset(str(tmp_path / "bad.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="objects.npy: not a readable"):
        load_dataset(str(tmp_path / "objects.npy"))


@pytest.mark.parametrize("images, message", [
    (np.zeros((4, 16, 16), np.uint8), r"images must have shape \(N, H, W, 3\) with N > 0, got \(4, 16, 16\)"),
    (np.zeros((4, 16, 16, 4), np.uint8), r"images .*got \(4, 16, 16, 4\)"),
    (np.zeros((0, 16, 16, 3), np.uint8), r"images .*got \(0, 16, 16, 3\)"),
    (np.zeros((4, 16, 16, 3), np.float32), "images must be uint8 .*got dtype float32"),
])
def test_bad_image_array(tmp_path, images, message):
    path = save(tmp_path / "sprites.npy", images)
    save(tmp_path / "labels.npy", np.eye(4))
    with pytest.raises(DatasetError, match="sprites.npy: " + message):
        load_dataset(path)


@pytest.mark.parametrize("labels, message", [
    (np.eye(5)[:3], "labels.npy: 3 labels for 4 images"),
    (np.array([0, 1, 2, 3]), r"labels.npy: labels must be an \(N, C\) one-hot or multi-hot array, got shape \(4,\)"),
    (np.array([[1, 0], [0.5, 0.5], [0, 1], [1, 0]]), r"labels.npy: .*one-hot or multi-hot \(0 or 1\); row 1"),
    (np.array([[1, 0], [0, 1], [0, 0], [1, 0]]), "labels.npy: .*row 2 has no 1"),
    (np.array([[2, 0], [0, 1], [0, 1], [1, 0]]), "labels.npy: .*row 0 is"),
    (np.array([["a"], ["b"], ["c"], ["d"]]), "labels.npy: labels must be numbers"),
])
def test_bad_labels(tmp_path, labels, message):
    path = save(tmp_path / "sprites.npy", np.zeros((4, 8, 8, 3), np.uint8))
    save(tmp_path / "labels.npy", labels)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path)


def test_context_names_must_match_columns(tmp_path, folder):
    path = course_pair(tmp_path)
    with pytest.raises(DatasetError, match=r"context_names: 2 names \['a', 'b'\] for 5 label columns"):
        load_dataset(str(path), context_names=["a", "b"])
    with pytest.raises(DatasetError, match="context_names: 3 names"):
        load_dataset("default", context_names=["a", "b", "c"])


def test_hub_bad_columns_and_labels(hub_root):
    features = hf.Features({"img": hf.Image(), "tags": hf.List(hf.Value("float32")), "ok": hf.List(hf.Value("int8"))})
    columns = {"img": [rgba_image() for _ in range(3)], "tags": [[1, 0], [0.2, 1], [0, 1]], "ok": [[1, 0]] * 3}
    make_hub_dir(hub_root, "tester/odd", columns, features)
    missing = r"hub:tester/odd: no column 'image' or 'label'; it has \['img', 'tags', 'ok'\]"
    with pytest.raises(DatasetError, match=missing):
        load_dataset("hub:tester/odd")
    with pytest.raises(DatasetError, match="hub:tester/odd column 'tags': .*row 1"):
        load_dataset("hub:tester/odd", image_column="img", label_column="tags", context_names=["a", "b"])
    with pytest.raises(DatasetError, match="hub:tester/odd column 'img': labels must be"):
        load_dataset("hub:tester/odd", image_column="img", label_column="img")
    with pytest.raises(DatasetError, match="hub:tester/odd column 'ok': row 0 is not an image"):
        load_dataset("hub:tester/odd", image_column="ok", label_column="ok", context_names=["a", "b"])
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["a", "b"])})
    make_hub_dir(hub_root, "tester/unlabelled", {"image": [rgba_image()] * 2, "label": [1, -1]}, features)
    with pytest.raises(DatasetError, match="hub:tester/unlabelled column 'label': row 1 has no valid label"):
        load_dataset("hub:tester/unlabelled")
    with pytest.raises(DatasetError, match="hub:a/b/c: expected hub:OWNER/NAME"):
        load_dataset("hub:a/b/c")


def test_palette_downscale_picks_a_colour_of_each_block():
    """Most frequent colour; darkest on a tie; the medoid when all four differ: never an in-between colour."""
    white, black, red, grey = (255, 255, 255), (0, 0, 0), (200, 0, 0), (120, 120, 120)
    blocks = [[[white, white], [white, red]],  # majority: white
              [[white, black], [black, white]],  # 2-2 tie: the darker, black (outlines survive)
              [[(255, 100, 100), (100, 255, 100)], [(30, 30, 30), (100, 100, 100)]],  # all differ: closest to the rest
              [[grey, grey], [grey, grey]]]
    tile = np.concatenate([np.array(b, np.uint8) for b in blocks], axis=1)[None]  # (1, 2, 8, 3)
    small = sd.palette_downscale(tile)
    assert small.shape == (1, 1, 4, 3)
    assert [tuple(int(v) for v in c) for c in small[0, 0]] == [white, black, (100, 100, 100), grey]
    with pytest.raises(DatasetError, match="even sizes"):
        sd.palette_downscale(np.zeros((1, 3, 4, 3), np.uint8))


def test_default_dataset_keeps_the_32px_palette_unless_asked_for_area_averages():
    with np.load(sd.DEFAULT_NPZ) as z:
        big, area = z["images32"][:50], z["images16"][:50]
    images = load_dataset("default").images[:50]
    palette = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    for small, large in zip(palette, big, strict=True):
        assert set(map(tuple, small.reshape(-1, 3))) <= set(map(tuple, large.reshape(-1, 3)))
    averaged = ((load_dataset("default", downscale="area").images[:50].permute(0, 2, 3, 1) + 1) * 127.5).round()
    assert np.array_equal(averaged.to(torch.uint8).numpy(), area)
    with pytest.raises(DatasetError, match="downscale must be one of"):
        load_dataset("default", downscale="nearest")
