"""training/metrics.py on inputs whose answers are known: feature sets of set shapes, hand-drawn sprites."""

import numpy as np
import pytest

from training.metrics import (
    background_colour,
    colour_groups,
    kernel_inception_distance,
    kid_subsets,
    manifold_membership,
    pixel_statistics,
    precision_recall,
)


def clusters(centres: np.ndarray, per_cluster: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.normal(size=(per_cluster, len(c))) for c in centres])


# ---- precision and recall ---------------------------------------------------------------------
def test_precision_recall_by_hand_in_one_dimension():
    real = np.array([[0.0], [1.0], [3.0]])  # k=1 radii: 1, 1, 2
    generated = np.array([[0.5], [4.9], [5.1], [-1.5]])  # k=1 radii: 2, 2, 0.2, 0.2
    # inside the real manifold: 0.5 (ball of 0) and 4.9 (ball of 3, 1.9 <= 2); not 5.1 nor -1.5
    assert manifold_membership(real, generated, k=1).tolist() == [True, True, False, False]
    # real 0 and 1 lie in the ball of 0.5 (radius 2); 3 is 1.9 from 4.9 (radius 0.2) and 2.5 from 0.5
    assert precision_recall(real, generated, k=1) == (0.5, pytest.approx(2 / 3))


def test_identical_sets_have_full_precision_and_recall():
    x = np.random.default_rng(0).normal(size=(300, 16))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_far_apart_sets_have_zero_precision_and_recall():
    real = clusters(np.zeros((1, 8)), 200, seed=0)
    generated = clusters(np.full((1, 8), 100.0), 200, seed=1)
    assert precision_recall(real, generated) == (0.0, 0.0)


def test_covering_half_the_modes_halves_recall_not_precision():
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]])  # four well-separated modes, in 2-D where
    # 250 points fill their k-NN manifold well (in more dimensions even real-vs-real precision drops below 1)
    real = clusters(centres, 250, seed=0)
    generated = clusters(centres[:2], 250, seed=1)  # fresh draws from two of them
    precision, recall = precision_recall(real, generated)
    assert precision >= 0.95
    assert recall == pytest.approx(0.5, abs=0.05)
    swapped = precision_recall(generated, real)  # the roles of precision and recall swap with the sets
    assert swapped[0] == pytest.approx(0.5, abs=0.05) and swapped[1] >= 0.95


def test_chunks_and_duplicates_do_not_change_membership():
    rng = np.random.default_rng(3)
    real, queries = rng.normal(size=(50, 4)), rng.normal(size=(40, 4))
    assert np.array_equal(manifold_membership(real, queries, chunk=7), manifold_membership(real, queries))
    # a point repeated k+1 times has radius 0, and its copies still lie in its ball
    repeated = np.concatenate([np.zeros((4, 4)), rng.normal(size=(10, 4)) + 30])
    assert manifold_membership(repeated, np.zeros((1, 4)), k=3).tolist() == [True]


def test_precision_recall_refuse_bad_input():
    with pytest.raises(ValueError, match="more than k vectors"):
        precision_recall(np.zeros((3, 2)), np.ones((10, 2)), k=3)
    with pytest.raises(ValueError, match="features per vector"):
        precision_recall(np.zeros((10, 2)), np.ones((10, 3)))
    with pytest.raises(ValueError, match="finite"):
        precision_recall(np.full((10, 2), np.nan), np.ones((10, 2)))


# ---- KID ----------------------------------------------------------------------------------------
def test_kid_matches_the_formula_term_by_term():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(k(a, b) for a in x for b in y) / (5 * 4)
    assert kernel_inception_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_large_for_far_apart_ones():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    far = kernel_inception_distance(x, rng.normal(size=(400, 16)) + 3)
    assert far > 1.0
    assert abs(kernel_inception_distance(x, x.copy())) < 1e-3 * far
    assert abs(kernel_inception_distance(x, rng.normal(size=(400, 16)))) < 1e-2 * far


def biased_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """The V-statistic, diagonals included: its mean grows as the sets shrink, which KID's must not."""
    d = x.shape[1]
    return float(((x @ x.T / d + 1) ** 3).mean() + ((y @ y.T / d + 1) ** 3).mean()
                  - 2 * ((x @ y.T / d + 1) ** 3).mean())


def test_kid_is_unbiased_at_every_sample_size():
    rng = np.random.default_rng(2)
    draws = 400
    means, errors = {}, {}
    for n in (4, 16, 64):
        pairs = [(rng.normal(size=(n, 8)), rng.normal(size=(n, 8))) for _ in range(draws)]
        kid = np.array([kernel_inception_distance(x, y) for x, y in pairs])
        means[n], errors[n] = kid.mean(), kid.std() / draws**0.5
        assert abs(means[n]) < 3 * errors[n], (n, means[n], errors[n])
        biased = np.array([biased_mmd(x, y) for x, y in pairs])
        assert biased.mean() > 3 * biased.std() / draws**0.5  # the test can tell biased from unbiased
    # no growth as n shrinks: the smallest sets' mean is within noise of the largest sets'
    assert abs(means[4] - means[64]) < 3 * np.hypot(errors[4], errors[64])


def test_kid_subsets_and_bad_input():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(300, 8)) + 2
    mean, std = kid_subsets(x, y, subsets=20, size=50)
    assert mean == pytest.approx(kernel_inception_distance(x, y), rel=0.2) and std > 0
    assert kid_subsets(x, y, subsets=20, size=50) == (mean, std)  # seeded
    assert kid_subsets(x, y, subsets=3, size=10_000)[1] == pytest.approx(0.0, abs=1e-12)  # whole sets each time
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(x[:1], y)


# ---- pixel statistics ----------------------------------------------------------------------------
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def sprite_on(background, size: int = 16) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    img[6:10, 6:10] = (200, 30, 30)  # a 4x4 red body
    return img


def test_background_share_tells_exact_from_speckled_backgrounds():
    clean = sprite_on(WHITE)
    speckled = clean.copy()
    speckled[:, :4][::2] = (250, 252, 255)  # 8 rows x 4 columns = 32 off-white pixels, all background-like
    speckled[15, 15] = (200, 200, 200)  # 55 below white: not background-like, out of the count
    assert pixel_statistics(clean[None], WHITE)["background_exact_share"] == 1.0
    # background-like: 256 - 16 red - 1 grey = 239 pixels, 32 of them off-white
    assert pixel_statistics(speckled[None], WHITE)["background_exact_share"] == pytest.approx(207 / 239)
    both = pixel_statistics(np.stack([clean, speckled]), WHITE)["background_exact_share"]
    assert both == pytest.approx((240 + 207) / (240 + 239))  # pooled over pixels, not averaged per sprite
    assert np.isnan(pixel_statistics(np.full((1, 4, 4, 3), 128, np.uint8), WHITE)["background_exact_share"])


def test_colours_per_sprite_counts_distinct_rgb_triples():
    a = sprite_on(BLACK)  # 2 colours
    b = sprite_on(BLACK)
    b[0, 0], b[0, 1] = (0, 0, 1), (1, 0, 0)  # differ from black in one channel each: 4 colours
    assert pixel_statistics(a[None], BLACK)["colours_per_sprite"] == 2.0
    assert pixel_statistics(np.stack([a, b]), BLACK)["colours_per_sprite"] == 3.0


def test_eye_level_figures_forgive_small_differences_and_count_large_ones():
    exact = sprite_on(WHITE)
    faint = exact.copy()
    faint[:, :4] = (253, 255, 252)  # 3 levels off in one channel: invisible, near but not exact
    faint[0, 15] = (240, 240, 240)  # 15 levels off: background-like, not near
    stats = pixel_statistics(faint[None], WHITE)
    assert stats["background_exact_share"] == pytest.approx(175 / 240)  # 240 background-like, 64 + 1 off
    assert stats["background_near_share"] == pytest.approx(239 / 240)
    assert pixel_statistics(exact[None], WHITE)["background_near_share"] == 1.0
    # colours within 8 levels of a more frequent one join its group: white, red, and the light grey
    shaded = faint.copy()
    shaded[6:10, 6] = (208, 30, 22)  # 8 off the red body in two channels: the same colour to the eye
    shaded[6, 7] = (209, 30, 30)  # 9 off: a second red
    assert colour_groups(shaded) == 4 and colour_groups(shaded, levels=0) == 6
    assert pixel_statistics(shaded[None], WHITE)["colour_groups_per_sprite"] == 4.0
    assert pixel_statistics(np.stack([exact, shaded]), WHITE)["colour_groups_per_sprite"] == 3.0


def test_high_frequency_energy_of_flat_and_checkerboard_sprites():
    flat = np.full((1, 16, 16, 3), 77, np.uint8)
    assert pixel_statistics(flat, BLACK)["high_frequency_energy"] == 0.0
    yy, xx = np.mgrid[:16, :16]
    board = np.zeros((1, 16, 16, 3), np.uint8)
    board[0][(yy + xx) % 2 == 1] = 255
    # replicate padding: interior |4 - 0| = 4, edge pixels 3, corners 2 -> (196*4 + 56*3 + 4*2) / 256
    assert pixel_statistics(board, BLACK)["high_frequency_energy"] == pytest.approx(3.75)
    dot = np.full((1, 16, 16, 3), 255, np.uint8)
    dot[0, 5, 5] = 204  # 0.2 below white: |4 x 0.2| at the dot + 4 neighbours x 0.2, in every channel
    assert pixel_statistics(dot, WHITE)["high_frequency_energy"] == pytest.approx(1.6 / 256)
    clean = sprite_on(WHITE)[None]
    speckle = clean.astype(int) - np.random.default_rng(0).integers(0, 12, clean.shape)
    assert pixel_statistics(speckle.astype(np.uint8), WHITE)["high_frequency_energy"] > \
        1.3 * pixel_statistics(clean, WHITE)["high_frequency_energy"]


def test_background_colour_reads_the_border_for_white_and_black_sets():
    white = np.stack([sprite_on(WHITE) for _ in range(3)])
    white[:, 2:14, 2:14] = BLACK  # most pixels are black, but the border is white
    assert background_colour(white) == WHITE
    black = np.stack([sprite_on(BLACK) for _ in range(3)])
    black[:, 2:14, 2:14] = WHITE
    black[0, 0, :] = (10, 20, 30)  # a few border pixels of another colour do not win
    assert background_colour(black) == BLACK
    assert background_colour(np.full((2, 5, 5, 3), (12, 34, 56), np.uint8)) == (12, 34, 56)


def test_dark_outline_share_counts_the_dark_pixels_on_the_figures_edge():
    plain = sprite_on(WHITE)  # a 4x4 red body: its 12 rim pixels are the edge, none dark
    assert pixel_statistics(plain[None], WHITE)["dark_outline_share"] == 0.0
    outlined = plain.copy()
    outlined[5:11, 5:11] = (20, 20, 30)  # a one-pixel dark outline round the body: the 20 edge pixels, all dark
    outlined[6:10, 6:10] = (200, 30, 30)
    assert pixel_statistics(outlined[None], WHITE)["dark_outline_share"] == 1.0
    soft = outlined.copy()
    soft[5, 5:11] = (90, 80, 85)  # the top of the outline lighter than the dark level: 6 of the 20 not dark
    assert pixel_statistics(soft[None], WHITE)["dark_outline_share"] == pytest.approx(14 / 20)
    halo = outlined.copy()
    halo[4, 5:11] = (235, 240, 238)  # a faint halo is background-like: the edge stays the outline
    assert pixel_statistics(halo[None], WHITE)["dark_outline_share"] == 1.0
    corner = np.full((16, 16, 3), 255, np.uint8)
    corner[0, 0] = (10, 10, 10)  # on the image border: an edge pixel; both sprites pooled, 1 dark of 1 + 12
    assert pixel_statistics(np.stack([corner, plain]), WHITE)["dark_outline_share"] == pytest.approx(1 / 13)
    assert np.isnan(pixel_statistics(np.full((1, 4, 4, 3), 255, np.uint8), WHITE)["dark_outline_share"])


def test_pixel_statistics_refuse_float_images():
    with pytest.raises(ValueError, match="uint8"):
        pixel_statistics(np.zeros((1, 16, 16, 3)), WHITE)
    with pytest.raises(ValueError, match="uint8"):
        background_colour(np.zeros((1, 16, 16), np.uint8))


def test_denoise_probe_scores_an_oracle_perfectly_and_a_blind_model_badly(tiny_dir):
    """The probe's figures on models whose answer is known: one that knows the clean sprites predicts the noise
    exactly (every pixel comes back), one that always predicts zero noise leaves all of it in."""
    import torch

    from model import load_pipeline
    from studies.denoise_probe import probe

    pipe = load_pipeline(tiny_dir)
    rng = np.random.default_rng(0)
    palette = np.array([[255, 255, 255], [200, 30, 30], [20, 20, 120]], np.uint8)
    sprites = palette[rng.integers(0, 3, (16, 8, 8))]  # (16, 8, 8, 3): three colours, white the commonest
    sprites[:, 0, :] = sprites[:, -1, :] = sprites[:, :, 0] = sprites[:, :, -1] = 255  # a white border
    images = torch.from_numpy(sprites).permute(0, 3, 1, 2).float() / 127.5 - 1
    contexts = torch.zeros(16, len(pipe.context_names))
    alpha_bar = pipe.noise_schedule.alpha_bar.float()

    def oracle(noisy, timestep, context):
        t = int(timestep.reshape(-1)[0]) + 1
        return (noisy - alpha_bar[t].sqrt() * images) / (1 - alpha_bar[t]).sqrt()

    pipe.predict_noise = oracle
    rows = probe(pipe, images, contexts, steps=(1, 50, 250))
    for row in rows:
        assert row["noise_rmse"] < 1e-3 and row["exact_pixels"] == 1.0 and row["background_exact_share"] == 1.0
        assert row["colours_per_sprite"] == row["real_colours_per_sprite"] <= 3
    pipe.predict_noise = lambda noisy, timestep, context: torch.zeros_like(noisy)
    blind = probe(pipe, images, contexts, steps=(1, 250))
    assert all(abs(row["noise_rmse"] - 1) < 0.1 for row in blind)
    assert blind[1]["exact_pixels"] < 0.1 and blind[1]["colours_per_sprite"] > 10
