"""A walk between two contexts: the same noise every time, only the context weights move.

The context reaches the U-Net as a weight vector, so nothing limits it to one-hot choices: ``(1 - w) * start +
w * end`` for w from 0 to 1 is a straight path between two of them, and sampling every stop from the same seed
(the same starting noise and, for the samplers that re-add noise, the same noise at every step) leaves the weights
as the only difference between the columns. What changes along the walk, and where, is what the context steers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .pipeline import ContextSpec, SpritePipeline

MAX_STOPS = 12  # columns of a walk; each is one sampling run


def walk_weights(start: np.ndarray, end: np.ndarray, stops: int) -> np.ndarray:
    """(stops, C) weights from ``start`` to ``end`` in even steps, both ends included."""
    if not 2 <= stops <= MAX_STOPS:
        raise ValueError(f"stops must be a whole number from 2 to {MAX_STOPS}, got {stops!r}")
    fractions = np.linspace(0.0, 1.0, stops)[:, None]
    return (1.0 - fractions) * np.asarray(start, dtype=np.float64) + fractions * np.asarray(end, dtype=np.float64)


def context_walk(pipe: SpritePipeline, start: ContextSpec | None, end: ContextSpec | None, stops: int = 7,
                 num_images: int = 4, seed: int = 0, **sampling) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sample every stop of the walk from one seed: yields (weights (C,), sprites (num_images, R, R, 3) uint8) per
    stop, first to last. ``sampling``: the pipeline's other arguments (sampler, steps, guidance, ...).

    The first stop's sprites are exactly ``pipe(start, num_images=num_images, seed=seed, **sampling)``'s, the last
    stop's ``pipe(end, ...)``'s.
    """
    ends = [pipe.context_vector(c, 1)[0].cpu().numpy() for c in (start, end)]
    for weights in walk_weights(*ends, stops):
        yield weights, pipe(weights, num_images=num_images, seed=seed, **sampling).array


def walk_sprites(columns: list[np.ndarray], stops: int) -> np.ndarray:
    """The stops sampled so far (each (rows, R, R, 3)) -> (rows * stops, R, R, 3) in reading order for a grid of
    ``stops`` columns: a row per sprite, a column per stop. Stops not sampled yet are blank (light grey), so the
    picture keeps its size while it fills in."""
    rows, size = columns[0].shape[0], columns[0].shape[1]
    blank = np.full((rows, size, size, 3), 224, np.uint8)
    filled = np.stack([*columns, *[blank] * (stops - len(columns))], axis=1)  # (rows, stops, R, R, 3)
    return filled.reshape(rows * stops, size, size, 3)
