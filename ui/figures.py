"""Figures the page draws: the noise schedule and the network's guesses across t, each with a marker at the
forward tab's timestep."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot state, safe in gradio's worker threads

from model import NoiseSchedule


def schedule_curves(schedule: NoiseSchedule) -> dict[str, np.ndarray]:
    """Over t = 0..T: the signal share sqrt(ab_t), the noise share sqrt(1 - ab_t) and log SNR = log(ab / (1 - ab))
    (undefined at t = 0, where no noise is left)."""
    alpha_bar = schedule.alpha_bar.numpy()
    t = np.arange(len(alpha_bar))
    with np.errstate(divide="ignore"):
        log_snr = np.log(alpha_bar / (1 - alpha_bar))
    return {"t": t, "signal": np.sqrt(alpha_bar), "noise": np.sqrt(1 - alpha_bar), "log_snr": log_snr}


def schedule_figure(schedule: NoiseSchedule, t: int) -> Figure:
    """Signal and noise shares (left) and log SNR (right) against t, each with a marker at t."""
    curves = schedule_curves(schedule)
    figure = Figure(figsize=(7.5, 2.6), dpi=90, layout="constrained")
    shares, snr = figure.subplots(1, 2)
    shares.plot(curves["t"], curves["signal"], label=r"signal $\sqrt{\bar\alpha_t}$")
    shares.plot(curves["t"], curves["noise"], label=r"noise $\sqrt{1-\bar\alpha_t}$")
    shares.set_ylim(0, 1.02)
    shares.legend(fontsize=8, loc="center right")
    snr.plot(curves["t"][1:], curves["log_snr"][1:], color="tab:green")
    snr.set_ylabel("log SNR", fontsize=9)
    ab = float(schedule.alpha_bar[t])
    for ax, title in ((shares, f"at t = {t}: {math.sqrt(ab):.2f} signal, {math.sqrt(1 - ab):.2f} noise"),
                      (snr, f"log SNR at t = {t}: " + (f"{math.log(ab / (1 - ab)):+.1f}" if t else "no noise"))):
        ax.axvline(t, color="black", linewidth=1.2, linestyle="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("t", fontsize=9)
        ax.set_xlim(0, schedule.num_steps)
        ax.grid(alpha=0.3)
    return figure


def guess_figure(curves: dict[str, np.ndarray], t: int, num_steps: int, close_levels: int) -> Figure:
    """ui/forward.py's guess_by_step for one sprite: the noise guess's RMS error (left) and the share of x0_hat
    within close_levels (right) against t, each with a marker at t."""
    figure = Figure(figsize=(7.5, 2.6), dpi=90, layout="constrained")
    noise, clean = figure.subplots(1, 2)
    noise.plot(curves["t"], curves["noise_rmse"], marker=".", color="tab:red")
    noise.axhline(1, color="grey", linewidth=0.8)
    noise.set_ylim(0, max(1.05, float(curves["noise_rmse"].max()) * 1.05))
    noise.set_title("RMS error of the noise guess ε̂ (1: guessing no noise)", fontsize=9)
    clean.plot(curves["t"], curves["clean_close"], marker=".", color="tab:blue")
    clean.set_ylim(0, 1.02)
    clean.set_title(f"share of x̂₀ within {close_levels} levels of x₀", fontsize=9)
    for ax in (noise, clean):
        ax.axvline(t, color="black", linewidth=1.2, linestyle="--")
        ax.set_xlabel("t", fontsize=9)
        ax.set_xlim(0, num_steps)
        ax.grid(alpha=0.3)
    return figure
