"""The bundled sprites and the pixel-art fitting that the app and training share.

The app's forward and redraw tabs fit uploads and show dataset sprites exactly as training sees them, so both
live in the core (training/sprite_data.py builds its datasets on these).
"""

from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_NPZ = Path(__file__).resolve().parents[1] / "data" / "sprites_dcss.npz"
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto this, as in the bundled set


class DatasetError(ValueError):
    """Bad dataset input; the message names the file or field at fault."""


def pad_to_square(picture: Image.Image, fill: int | tuple[int, ...]) -> Image.Image:
    """Centred across, standing on the bottom edge, on a square of ``fill``: where a sprite stands in its tile.
    The sprite and its repaint mask (model/editing.py: fit_mask) are placed alike."""
    side = max(picture.size)
    if picture.width == picture.height:
        return picture
    canvas = Image.new(picture.mode, (side, side), fill)
    canvas.paste(picture, ((side - picture.width) // 2, side - picture.height))
    return canvas


def fit_pixel_art(im: Image.Image, resolution: int) -> np.ndarray:
    """Any image -> (R, R, 3) uint8: composite transparency, pad to square, resize for pixel art.

    Shrinking averages areas (a 2x2 mean for 32 -> 16, keeping thin outlines as soft lines);
    enlarging repeats pixels (nearest), so hard pixel edges stay hard.
    """
    flat = Image.alpha_composite(Image.new("RGBA", im.size, BACKGROUND + (255,)), im.convert("RGBA"))
    square = pad_to_square(flat.convert("RGB"), BACKGROUND)
    side = square.width
    if side != resolution:
        square = square.resize((resolution, resolution), Image.BOX if side > resolution else Image.NEAREST)
    return np.asarray(square, dtype=np.uint8)


def resize_array(images: np.ndarray, resolution: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, R, R, 3), each through fit_pixel_art; unchanged when already R x R."""
    if images.shape[1:3] == (resolution, resolution):
        return images
    return np.stack([fit_pixel_art(Image.fromarray(im), resolution) for im in images])


def palette_downscale(images: np.ndarray) -> np.ndarray:
    """(N, 2R, 2R, 3) uint8 -> (N, R, R, 3): each 2x2 block becomes one of its own colours.

    Area averaging invents in-between colours the pixel art never had (a 1-pixel outline turns into a
    grey smear); picking one of the block's pixels keeps the art's palette. The pick: the block's most
    frequent colour, the darkest on a tie (outlines survive); when all four differ, the medoid (the
    colour closest to the other three), so a smooth gradient does not turn dark.
    """
    n, h, w, _ = images.shape
    if h % 2 or w % 2:
        raise DatasetError(f"palette downscale needs even sizes, got {h}x{w}")
    blocks = images.reshape(n, h // 2, 2, w // 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4, 3)
    b = blocks.astype(np.int64)
    codes = (b[..., 0] << 16) | (b[..., 1] << 8) | b[..., 2]
    counts = (codes[..., :, None] == codes[..., None, :]).sum(-1)
    spread = np.abs(b[..., :, None, :] - b[..., None, :, :]).sum((-1, -2))  # L1 distance to the other three
    luma = b @ np.array([299, 587, 114])
    tie_break = np.where(counts.max(-1, keepdims=True) > 1, luma, spread)  # both < 10^6
    pick = (counts * 10**7 - tie_break).argmax(-1)
    return np.take_along_axis(blocks, pick[..., None, None], axis=3)[..., 0, :]


DOWNSCALES = ("palette", "area")


def default_sprites(resolution: int = 16, downscale: str = "palette") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bundled sprites as uint8 (N, R, R, 3), one-hot labels (N, 5) and context names.

    downscale: how the 16 px sprites come from the 32 px tiles: "palette" (palette_downscale) or
    "area" (the 2x2 mean stored in the file).
    """
    if downscale not in DOWNSCALES:
        raise DatasetError(f"downscale must be one of {', '.join(DOWNSCALES)}, got {downscale!r}")
    if not DEFAULT_NPZ.exists():
        raise DatasetError(f"{DEFAULT_NPZ}: bundled dataset missing; rebuild it: python -m training.build_dataset")
    with np.load(DEFAULT_NPZ, allow_pickle=False) as z:
        labels, names = z["labels"], [str(s) for s in z["context_names"]]
        if resolution == 16 and downscale == "palette":
            images = palette_downscale(z["images32"])
        else:
            key = f"images{resolution}" if f"images{resolution}" in z.files else "images32"
            images = resize_array(z[key], resolution)
    return images, labels, names
