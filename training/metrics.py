"""Pure figures for comparing sets of sprites or of their features; no judge, no dataset, no model.

Feature-space figures (Fréchet distance, KID, improved precision and recall) say how two sets differ
as the judge sees them; the pixel statistics say what eyes see and a noise-trained judge does not
(an exact background, few flat colours, no speckle).
"""

from __future__ import annotations

import numpy as np
import torch

BACKGROUND_TOLERANCE = 24  # uint8 units per channel: "background-like" pixels, exact or not
# What an eye tells apart on a sprite shown large: a flat area 1-3 levels off is invisible, 8 levels is about
# where two neighbouring flat colours start to read as two. The exact figures count both kinds of difference;
# these two count only what shows, so a gap that the exact ones find can be told visible or not.
BACKGROUND_NEAR_LEVELS = 3
COLOUR_GROUP_LEVELS = 8
# Crawl's tiles draw a dark one-pixel outline around the figure; a soft sample has a lighter, blurred rim.
OUTLINE_DARK_LEVEL = 80  # an edge pixel is dark when every channel is at most this

__all__ = [
    "BACKGROUND_NEAR_LEVELS", "BACKGROUND_TOLERANCE", "COLOUR_GROUP_LEVELS", "OUTLINE_DARK_LEVEL", "background_colour",
    "colour_groups", "frechet_distance", "kernel_inception_distance", "kid_subsets",
    "manifold_membership", "nearest_distances", "pixel_statistics", "precision_recall",
]


# ---- feature-space figures ------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray, weights_a: np.ndarray | None = None,
                     weights_b: np.ndarray | None = None) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of (weighted) Gaussian fits, float64.

    The matrix root goes through symmetric eigendecompositions, which stay real and stable for the
    rank-deficient covariances of small sample sets.
    """
    (mu_a, s_a), (mu_b, s_b) = _weighted_stats(a, weights_a), _weighted_stats(b, weights_b)
    vals, vecs = np.linalg.eigh(s_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(value, 0.0))


def _weighted_stats(x: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and (reliability-weights unbiased) covariance."""
    x = np.asarray(x, dtype=np.float64)
    w = np.full(len(x), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu = w @ x
    centred = x - mu
    return mu, (centred * w[:, None]).T @ centred / max(1.0 - (w**2).sum(), 1e-12)


def _features(x: np.ndarray, what: str) -> torch.Tensor:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"{what} must be a finite (N, D) array of feature vectors, got shape {x.shape}")
    return torch.from_numpy(x)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The direct formula, not the matrix-product shortcut: a point's distance to itself is exactly 0.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each vector to its k-th nearest neighbour in the same set, itself excluded."""
    if not 1 <= k < len(x):
        raise ValueError(f"a manifold with k={k} needs more than k vectors, got {len(x)}")
    radii = []
    for start in range(0, len(x), chunk):
        d = _cdist(x[start:start + chunk], x)
        rows = torch.arange(len(d))
        d[rows, start + rows] = float("inf")  # itself, by index: exact duplicates still count as neighbours
        radii.append(d.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def manifold_membership(reference: np.ndarray, queries: np.ndarray, k: int = 3, chunk: int = 1024) -> np.ndarray:
    """(len(queries),) bool: inside the reference's k-NN manifold, the union of balls around each reference
    vector with radius = distance to its k-th nearest neighbour in the reference (Kynkäänniemi et al. 2019).

    Returned per query, not as a share, so a caller can weigh contexts equally.
    """
    ref, q = _features(reference, "reference"), _features(queries, "queries")
    if ref.shape[1] != q.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} features per vector but queries have {q.shape[1]}")
    radii = _knn_radii(ref, k, chunk)
    inside = [(_cdist(q[start:start + chunk], ref) <= radii).any(dim=1) for start in range(0, len(q), chunk)]
    return torch.cat(inside).numpy() if inside else np.zeros(0, dtype=bool)


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (share of generated inside the real manifold: realism) and recall (share of real
    inside the generated manifold: coverage), Kynkäänniemi et al. 2019.

    Both depend on the set sizes, so compare with a real set of the same size, never with 1.
    """
    precision = manifold_membership(real, generated, k).mean()
    recall = manifold_membership(generated, real, k).mean()
    return float(precision), float(recall)


def _kernel_sums(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float(kxx.sum() - kxx.diagonal().sum()), float(kyy.sum() - kyy.diagonal().sum()), float(kxy.sum())


def kernel_inception_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (Bińkowski et al. 2018).

    Unbiased: its expectation does not depend on the set sizes, so unlike FD it does not grow for small
    sets, and sets of different sizes compare fairly. It can be slightly negative for equal distributions.
    """
    a, b = _features(x, "x"), _features(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x has {a.shape[1]} features per vector but y has {b.shape[1]}")
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 vectors on each side, got {m} and {n}")
    sxx, syy, sxy = _kernel_sums(a, b)
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


def kid_subsets(x: np.ndarray, y: np.ndarray, subsets: int = 100, size: int = 1000,
                seed: int = 0) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` seeded random subsets of min(size, len) vectors from each side:
    the spread that the usual "KID ± std" reports."""
    rng = np.random.default_rng(seed)
    size_x, size_y = min(size, len(x)), min(size, len(y))
    values = [kernel_inception_distance(x[rng.choice(len(x), size_x, replace=False)],
                                        y[rng.choice(len(y), size_y, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def nearest_distances(samples: np.ndarray, reference: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """RMS distance (uint8 units) from each (N, H, W, 3) sample to its nearest reference sprite or mirror image.

    Mirror images count because training flips sprites: a flipped copy is still a copy.
    reference=None: leave-one-out within `samples` (each one's own copy and mirror are skipped).
    """
    leave_one_out = reference is None
    reference = samples if leave_one_out else reference
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples of shape {samples.shape[1:]} cannot be compared with sprites of "
                         f"{reference.shape[1:]}")
    ref = np.concatenate([reference, reference[:, :, ::-1]]).reshape(2 * len(reference), -1)
    ref = torch.from_numpy(ref).double()
    out = []
    for start in range(0, len(samples), chunk):
        s = torch.from_numpy(samples[start:start + chunk].reshape(-1, ref.shape[1])).double()
        d = torch.cdist(s, ref)
        if leave_one_out:
            rows = torch.arange(len(s))
            d[rows, start + rows] = d[rows, len(reference) + start + rows] = float("inf")
        out.append(d.min(1).values)
    return (torch.cat(out) / ref.shape[1] ** 0.5).numpy()


# ---- pixel statistics -------------------------------------------------------------------------
def _check_sprites(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(f"expected (N, H, W, 3) uint8 sprites, got {images.dtype} of shape {images.shape}")
    return images


def _packed(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 0xRRGGBB, so one integer compares a whole colour."""
    p = pixels.astype(np.int32)
    return (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2]


def background_colour(images_uint8: np.ndarray) -> tuple[int, int, int]:
    """The most frequent colour of the 1-pixel border over all (N, H, W, 3) sprites (lowest 0xRRGGBB on ties).

    Sprites are drawn on one flat colour that touches the edges, white in one set and black in another;
    the border finds it without being told.
    """
    images = _check_sprites(images_uint8)
    border = np.zeros(images.shape[1:3], dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    values, counts = np.unique(_packed(images[:, border]), return_counts=True)
    top = int(values[np.argmax(counts)])
    return top >> 16, (top >> 8) & 255, top & 255


def colour_groups(sprite: np.ndarray, levels: int = COLOUR_GROUP_LEVELS) -> int:
    """How many colours one (H, W, 3) uint8 sprite holds when colours within ``levels`` of each other count as one.

    Colours are taken from the most to the least frequent; one starts a new group unless every channel is
    within ``levels`` of a group already started. levels=0 counts exact RGB triples.
    """
    colours, counts = np.unique(sprite.reshape(-1, 3), axis=0, return_counts=True)
    groups = np.empty((0, 3), dtype=np.int16)
    for colour in colours[np.argsort(-counts, kind="stable")].astype(np.int16):
        if not len(groups) or np.abs(groups - colour).max(axis=1).min() > levels:
            groups = np.vstack([groups, colour])
    return len(groups)


def pixel_statistics(images_uint8: np.ndarray, background: tuple[int, int, int]) -> dict[str, float]:
    """Figures of pixel art that a noise-trained judge barely feels, for (N, H, W, 3) uint8 sprites.

    - background_exact_share: of the background-like pixels (every channel within BACKGROUND_TOLERANCE
      of `background`), the share exactly equal to it; speckle lowers it. NaN when no pixel is
      background-like (the share is then undefined).
    - colours_per_sprite: mean number of distinct RGB colours per sprite; pixel art uses few.
    - high_frequency_energy: mean absolute 4-neighbour Laplacian 4x - (up + down + left + right) of
      the image in [0, 1], per channel, with replicate padding (border pixels count; a flat image
      gives 0, a 1-pixel black-and-white checkerboard 3.75 at 16 px); noise raises it.
    - background_near_share and colour_groups_per_sprite: the first two at what an eye sees, the share
      within BACKGROUND_NEAR_LEVELS of the background and colours merged within COLOUR_GROUP_LEVELS
      (:func:`colour_groups`). They are diagnostics beside the exact figures, not part of the quality bar.
    - dark_outline_share, a diagnostic too: of the figure's edge pixels (not background-like, with a
      background-like 4-neighbour or on the image border), the share with every channel at most
      OUTLINE_DARK_LEVEL. NaN when no pixel is on an edge. It measures little on a dark background.
    """
    images = _check_sprites(images_uint8)
    bg = np.asarray(background, dtype=np.int16)
    diff = np.abs(images.astype(np.int16) - bg).max(axis=-1)
    like = diff <= BACKGROUND_TOLERANCE
    share, near = ((float((diff <= levels).sum() / like.sum()) if like.any() else float("nan"))
                   for levels in (0, BACKGROUND_NEAR_LEVELS))

    outside = np.pad(like, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    edge = ~like & (outside[:, :-2, 1:-1] | outside[:, 2:, 1:-1] | outside[:, 1:-1, :-2] | outside[:, 1:-1, 2:])
    dark = edge & (images.max(axis=-1) <= OUTLINE_DARK_LEVEL)
    outline = float(dark.sum() / edge.sum()) if edge.any() else float("nan")

    packed = np.sort(_packed(images).reshape(len(images), -1), axis=1)
    colours = 1 + (np.diff(packed, axis=1) != 0).sum(axis=1)

    x = images.astype(np.int32)  # in integers, so a flat image gives exactly 0
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    laplacian = 4 * x - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]
    return {"background_exact_share": share, "colours_per_sprite": float(colours.mean()),
            "high_frequency_energy": float(np.abs(laplacian).mean() / 255),
            "background_near_share": near,
            "colour_groups_per_sprite": float(np.mean([colour_groups(image) for image in images])),
            "dark_outline_share": outline}
