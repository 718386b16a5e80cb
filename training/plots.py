"""The model card's training figures: the loss curve and the sample grids over training.

train.py keeps every logged (step, loss, learning rate) in ``loss_history.csv`` next to the checkpoints, so
a resumed run continues the same curve; hub.write_model_card turns that file and the ``samples/step_*.png``
grids into ``loss.png`` and ``samples_over_training.png``.

matplotlib is imported inside plot_loss and used through its object-oriented API (a ``Figure`` of its own,
no pyplot): no global backend or figure state, so it is thread-safe, needs no display, and training and the
Hub push retry start without loading it.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

LOSS_HISTORY = "loss_history.csv"
LOSS_COLUMNS = ("step", "loss", "learning_rate")
SMOOTHING = 0.9  # weight of the past in the exponential moving average of the plotted loss
GRID_NAME = re.compile(r"step_(\d+)\.png")
GAP = 8  # pixels of background around and between the grids in samples_over_training
CAPTION_HEIGHT = 24  # the band above each grid that holds its "step N"
BACKGROUND = (255, 255, 255)


class LossRow(NamedTuple):
    """One logged line of loss_history.csv: the mean loss since the previous log, and the learning rate."""

    step: int
    loss: float
    learning_rate: float


# ---- the loss history ------------------------------------------------------------------------


def write_loss_history(csv_path: str | Path, rows: list[LossRow] | list[tuple[int, float, float]]) -> bool:
    """Write the rows under a temporary name, then rename: a kill mid-write leaves the previous file whole.

    A failed write (a full disk) is logged and returns False rather than raising: the history is a record,
    and train.py calls this on the main process just before a collective checkpoint save, where an error on
    one process would leave the others waiting; the checkpoint save then reports the disk itself.
    """
    path = Path(csv_path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(LOSS_COLUMNS)
            writer.writerows(rows)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        logger.warning(f"could not write the loss history {path}: {err}")
        return False
    return True


def read_loss_history(csv_path: str | Path, up_to_step: int | None = None) -> list[LossRow]:
    """The rows of a loss_history.csv ([] when there is none), in file order.

    A run resumed from checkpoint-S trains the steps after S again, so its caller passes up_to_step=S: the
    rows the killed run logged after S are dropped and the curve has neither gaps nor duplicates. Lines that
    do not parse (a hand-edited file) are skipped: the history is a record, never a reason to stop training.
    """
    path = Path(csv_path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            try:
                row = LossRow(int(record["step"]), float(record["loss"]), float(record["learning_rate"]))
            except (KeyError, TypeError, ValueError):
                continue
            if up_to_step is None or row.step <= up_to_step:
                rows.append(row)
    return rows


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing): the start is not pulled to 0."""
    average, out = 0.0, []
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_loss(csv_path: str | Path, png_path: str | Path) -> Path:
    """loss.png: the logged loss faintly, its smoothed curve over it (log y), the learning rate on a twin axis.

    The raw windowed loss of a diffusion model is noisy (each batch draws its own noise levels); the smoothed
    curve shows the trend and the faint one how much it scatters. The learning rate explains bends (warm-up,
    decay). Non-finite and non-positive losses cannot sit on a log axis and are left out.
    """
    from matplotlib.figure import Figure

    rows = [r for r in read_loss_history(csv_path) if math.isfinite(r.loss) and r.loss > 0]
    if not rows:
        raise ValueError(f"{csv_path} holds no finite, positive loss to plot")
    steps, losses = [r.step for r in rows], [r.loss for r in rows]
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    raw = ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="logged loss")
    smoothed = ax.plot(steps, smooth(losses), color="tab:blue", linewidth=1.8,
                       label=f"smoothed (EMA, weight {SMOOTHING:g}, bias-corrected)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Training loss")
    ax.grid(True, which="major", alpha=0.3)
    lr_axis = ax.twinx()
    lr = lr_axis.plot(steps, [r.learning_rate for r in rows], color="tab:gray", linestyle="--", linewidth=1,
                      label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:gray")
    lr_axis.tick_params(axis="y", colors="tab:gray")
    lr_axis.set_ylim(bottom=0)
    lines = raw + smoothed + lr
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")
    path = Path(png_path)
    fig.savefig(path, format="png")
    return path


# ---- the sample grids over training ---------------------------------------------------------


def sample_grids(samples_dir: str | Path, up_to_step: int | None = None) -> dict[int, Path]:
    """train.py's samples/step_<N>.png grids by step, in step order ({} when there are none)."""
    folder = Path(samples_dir)
    found = {}
    for path in folder.iterdir() if folder.is_dir() else []:
        match = GRID_NAME.fullmatch(path.name)
        if match and (up_to_step is None or int(match.group(1)) <= up_to_step):
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def spread(n: int, k: int) -> list[int]:
    """k of the indices 0..n-1, evenly spread, always the first and the last (all of them when k >= n)."""
    if k >= n or n <= 1:
        return list(range(n))
    if k <= 1:
        return [n - 1]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]  # distinct: their spacing (n-1)/(k-1) exceeds 1


def _caption_font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font, so captions need no system fonts (the bitmap one before Pillow 10.1)."""
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def samples_over_training(samples_dir: str | Path, png_path: str | Path, max_columns: int = 6,
                          up_to_step: int | None = None) -> list[int]:
    """Up to max_columns of the saved grids side by side, oldest left, each under "step N"; returns the steps.

    Every grid is drawn from the same noise, so the row shows how the model's sprites formed. The grids are
    pasted at their own size, never resampled: every sprite pixel stays exactly the colour it was sampled.
    up_to_step leaves out grids a killed run saved after the step this run ended at.
    """
    if max_columns < 1:
        raise ValueError(f"max_columns must be at least 1, got {max_columns}")
    grids = sample_grids(samples_dir, up_to_step)
    if not grids:
        raise ValueError(f"{samples_dir} holds no step_*.png sample grid")
    steps = list(grids)
    chosen = [steps[i] for i in spread(len(steps), max_columns)]
    images = []
    for step in chosen:
        with Image.open(grids[step]) as image:
            images.append(image.convert("RGB"))
    width = GAP + sum(image.width + GAP for image in images)
    height = CAPTION_HEIGHT + max(image.height for image in images) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _caption_font()
    x = GAP
    for step, image in zip(chosen, images, strict=True):
        sheet.paste(image, (x, CAPTION_HEIGHT))
        caption = f"step {step}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        draw.text((x + (image.width - right - left) // 2, (CAPTION_HEIGHT - bottom - top) // 2), caption,
                  fill=(0, 0, 0), font=font)
        x += image.width + GAP
    path = Path(png_path)
    sheet.save(path, format="PNG")
    return chosen
