"""The dataset build: label rules, pixel handling and reproducibility on small synthetic inputs,
plus checks of the committed data/ files. Nothing here uses the network or apt."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import build_dataset as bd
from training.sprite_data import BACKGROUND, DEFAULT_NPZ


def png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def sprite(seed: int, size=(32, 32), box=20) -> np.ndarray:
    """A distinct opaque random block centred on a transparent tile."""
    rgba = np.zeros((*size, 4), np.uint8)
    h, w = size
    y, x = (h - box) // 2, (w - box) // 2
    rgba[y:y + box, x:x + box, :3] = np.random.default_rng(seed).integers(0, 256, (box, box, 3))
    rgba[y:y + box, x:x + box, 3] = 255
    return rgba


@pytest.mark.parametrize("rel, context", [
    ("player/base/human_m.png", "hero"),
    ("player/base/shadow.png", None),
    ("player/body/robe.png", None),  # paper-doll layer, not a hero by itself
    ("mon/animals/rat.png", "non-hero"),
    ("mon/humanoids/elves/deep_elf_archer.png", "non-hero"),
    ("mon/tentacles/kraken_ends/kraken_tentacle1.png", None),
    ("mon/statues/block_of_ice.png", None),
    ("mon/vault/air_elementalist_statue.png", None),
    ("mon/player/gastronaut.png", None),
    ("mon/panlord/demon_body_crouch.png", None),
    ("mon/mutantbeast/base1.png", None),
    ("item/food/apple.png", "food"),
    ("item/food/bone1.png", None),
    ("item/food/chunk_brands/i-poison.png", None),
    ("UNUSED/food/lychee.png", "food"),
    ("UNUSED/food/i-mutation.png", None),
    ("UNUSED/monsters/orc.png", None),
    ("gui/spells/fire/bolt_of_fire.png", "spell"),
    ("gui/spells/summoning/call_imp.png", None),
    ("gui/spells/monster/summon_vermin.png", None),
    ("gui/spells/monster/fire_breath.png", "spell"),
    ("gui/spells/bg.png", None),
    ("effect/cloud_fire0.png", "spell"),
    ("effect/bolt01.png", "spell"),  # magic bolt
    ("effect/bolt1.png", None),  # crossbow bolt
    ("effect/arrow3.png", None),
    ("effect/cloud_grey_smoke.png", None),
    ("effect/cloud_gold_dust2.png", None),
    ("effect/sanctuary.png", None),
    ("item/weapon/long_sword1.png", "item"),
    ("item/weapon/artefact/spwpn_demon_axe.png", "item"),
    ("item/weapon/brands/i-chaos.png", None),
    ("item/armour/brands/fire.png", None),
    ("item/scroll/i-fear.png", None),
    ("item/scroll/scroll-blue.png", "item"),
    ("item/misc/uncollected_runes/rune_abyss.png", None),
    ("item/gold/01.png", None),
    ("item/potion/._ruby.png", None),  # macOS resource fork in the tarball
    ("dngn/floor/grass0.png", None),
    ("mon/animals/readme.txt", None),
])
def test_context_rules(rel, context):
    assert bd.context_of(rel) == context


def test_opaque_tile_loses_flat_surround_only():
    rgb = np.full((32, 32, 3), 255, np.uint8)
    rgb[8:24, 8:24] = (200, 0, 0)
    rgb[12:20, 12:20] = 255  # white enclosed by the sprite stays opaque
    rgba = bd.decode(png(rgb))
    assert rgba[0, 0, 3] == 0 and rgba[16, 16, 3] == 255 and rgba[10, 10, 3] == 255
    assert (rgba[..., 3] == 255).sum() == 16 * 16


def test_tall_tiles_are_padded_and_averaged_by_area():
    tall = np.zeros((48, 32, 4), np.uint8)
    tall[..., :3], tall[..., 3] = 100, 255
    sq = bd.to_square(tall)
    assert sq.shape == (48, 48, 4) and sq[0, 0, 3] == 0 and sq[-1, 8, 3] == 255
    flat = np.full((48, 48, 3), 7.0)
    assert np.allclose(bd.area_resize(flat, 32), 7.0) and np.allclose(bd.area_resize(flat, 16), 7.0)


def test_downscale_is_alpha_aware_2x2_average():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, ::2] = (0, 0, 0, 255)  # 1-pixel black lines on transparent: every-other-pixel would keep or lose them
    img32, img16, coverage = bd.render(rgba)
    assert coverage == 0.5
    assert (img32[:, 1] == BACKGROUND).all() and (img32[:, 0] == 0).all()
    expected = np.floor(np.array(BACKGROUND) / 2 + 0.5)  # half black, half background
    assert (img16 == expected).all()


def tile_tarball(path: Path, tiles: dict[str, np.ndarray]) -> Path:
    with tarfile.open(path, "w:xz") as tf:
        for rel, rgba in tiles.items():
            data = png(rgba)
            info = tarfile.TarInfo(bd.TILE_ROOT + rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("stone_soup-0.28.0/source/main.cc")  # not a tile: never read
        tf.addfile(info, io.BytesIO(b""))
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    rat = sprite(2)
    speck = np.zeros((32, 32, 4), np.uint8)
    speck[15:17, 15:17] = 255
    tiles = {
        "player/base/human_m.png": sprite(1),
        "player/body/robe.png": sprite(10, box=12),
        "player/hand1/sword.png": sprite(11, box=8),
        "player/hair/brown.png": sprite(12, box=6),
        "mon/animals/rat.png": rat,
        "mon/animals/rat_mirror.png": rat[:, ::-1],  # a mirror image is a duplicate
        "mon/animals/speck.png": speck,  # near-empty
        "mon/unique/tall.png": sprite(3, size=(48, 32)),
        "mon/tentacles/vine_ends/vine_E.png": sprite(4),
        "item/food/apple.png": sprite(5),
        "item/food/bone1.png": sprite(6),
        "gui/spells/fire/fireball.png": sprite(7),
        "item/weapon/sword.png": sprite(8),
        "item/weapon/sword_copy.png": sprite(8),  # exact duplicate
    }
    tar = tile_tarball(tmp_path_factory.mktemp("src") / "crawl.orig.tar.xz", tiles)
    return bd.read_crawl_tiles(tar)


def test_build_on_synthetic_tree(tree):
    assert "player/base/human_m.png" in tree and not any(k.endswith(".cc") for k in tree)
    arrays = bd.build(tree, {"crossfire:arch/food/pear.111": png(sprite(9))}, n_dolls=3, seed=0, log=lambda _: None)
    sources = list(arrays["sources"])
    labels = arrays["labels"]
    assert arrays["images16"].shape == (len(sources), 16, 16, 3) and arrays["images16"].dtype == np.uint8
    assert arrays["images32"].shape == (len(sources), 32, 32, 3)
    assert (labels.sum(1) == 1).all() and list(arrays["context_names"]) == bd.CONTEXTS
    by_context = {c: [s for s, row in zip(sources, labels, strict=True) if row[i]] for i, c in enumerate(bd.CONTEXTS)}
    assert by_context["non-hero"] == ["crawl:mon/animals/rat.png", "crawl:mon/unique/tall.png"]
    assert by_context["food"] == ["crawl:item/food/apple.png", "crossfire:arch/food/pear.111"]
    assert by_context["spell"] == ["crawl:gui/spells/fire/fireball.png"]
    assert by_context["item"] == ["crawl:item/weapon/sword.png"]
    heroes = by_context["hero"]
    assert heroes[0] == "crawl:player/base/human_m.png"
    assert 1 <= len(heroes) - 1 <= 3 and all(h.startswith("doll:base/human_m") for h in heroes[1:])
    again = bd.build(tree, {"crossfire:arch/food/pear.111": png(sprite(9))}, n_dolls=3, seed=0, log=lambda _: None)
    assert bd.arrays_sha256(again) == bd.arrays_sha256(arrays)


def test_npz_is_byte_reproducible(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "names": np.array(["x", "yy"])}
    bd.save_npz(tmp_path / "1.npz", arrays)
    bd.save_npz(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with np.load(tmp_path / "1.npz", allow_pickle=False) as z:
        assert (z["a"] == arrays["a"]).all() and list(z["names"]) == ["x", "yy"]


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def test_crossfire_food_from_deb(tmp_path):
    faces = b""
    for name in ["./arch/food/produce/apple.111", "./arch/food/booze.111", "./arch/flesh/human/arm.111",
                 "./arch/flesh/generic/heart.111", "./arch/food/fish_3.111", "./arch/food/fish_3.112"]:
        data = png(sprite(len(faces)))
        faces += f"IMAGE {len(data)} {name}\n".encode() + data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        info = tarfile.TarInfo(bd.FACES_FILE)
        info.size = len(faces)
        tf.addfile(info, io.BytesIO(faces))
    deb = tmp_path / "crossfire-common.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", b"x")
                    + ar_member("data.tar.xz", buf.getvalue()))
    food = bd.read_crossfire_food(deb)
    assert sorted(food) == ["crossfire:arch/flesh/generic/heart.111", "crossfire:arch/food/fish_3.111",
                            "crossfire:arch/food/produce/apple.111"]
    assert bd.decode(food["crossfire:arch/food/fish_3.111"]).shape == (32, 32, 4)


def test_derived_apt_sources_add_deb_src(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "main.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: stable\nComponents: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n -----END PGP PUBLIC KEY BLOCK-----\n\n"
        "Types: deb\nURIs: http://off.invalid\nSuites: x\nComponents: y\nEnabled: no\n")
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text("deb http://ignored.invalid x y\n")
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.invalid s c1 c2\n")
    text = bd.derived_apt_sources(tmp_path)
    assert text.count("Types: deb deb-src") == 2
    assert "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n" in text
    assert "URIs: http://one.invalid\nSuites: s\nComponents: c1 c2\nSigned-By: /k.gpg" in text
    assert "off.invalid" not in text and "ignored.invalid" not in text


def test_fetch_reuses_verified_cache_and_rejects_bad_hash(tmp_path):
    (tmp_path / "a.tar.xz").write_bytes(b"tiles")
    good = bd.Source("a", "1", "a.tar.xz", bd.hashlib.sha256(b"tiles").hexdigest(), "source")
    assert bd.fetch([good], tmp_path, log=lambda _: None) == {"a": tmp_path / "a.tar.xz"}
    with pytest.raises(SystemExit, match="a.tar.xz: sha256"):
        bd.fetch([good._replace(sha256="0" * 64)], tmp_path, log=lambda _: None)


def test_contact_sheet_grid():
    sheet = bd.contact_sheet(np.zeros((30, 16, 16, 3), np.uint8), cols=12, scale=3)
    assert sheet.size == ((12 * 17 + 1) * 3, (3 * 17 + 1) * 3)


def test_committed_dataset_matches_build_hash():
    with np.load(DEFAULT_NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert bd.arrays_sha256(arrays) == bd.ARRAYS_SHA256, "data/ is stale: rerun python -m training.build_dataset"
    assert list(arrays["context_names"]) == bd.CONTEXTS
    labels = arrays["labels"]
    assert (labels.sum(1) == 1).all() and (labels.sum(0) >= 60).all()
    assert len(arrays["sources"]) == len(labels) == len(arrays["images16"]) == len(arrays["images32"])
    keys = {min(im.tobytes(), im[:, ::-1].tobytes()) for im in arrays["images16"]}
    assert len(keys) == len(labels)  # distinct, mirror images included
    assert DEFAULT_NPZ.stat().st_size < 4e6
    for name in bd.CONTEXTS:
        assert (DEFAULT_NPZ.parent / "contact_sheets" / f"{name}.png").is_file()
