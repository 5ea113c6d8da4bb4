"""A study's figures: each trial's value in order with the best so far, every trial's validation curve
(pruned ones stopping early), the parameters against the value (parallel coordinates), and how much of
the value's spread each parameter explains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from .canvas import save, subplots

STATE_COLOURS = {"complete": "#1f77b4", "pruned": "#b0b0b0", "fail": "#d62728"}


def plot_history(trials: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """`trials`: {number, state, value}; complete trials as dots, pruned as grey crosses at their last value."""
    fig, ax = subplots(figsize=(6.4, 3.6))
    best, line = None, []
    for t in trials:
        if t["value"] is None:
            continue
        marker = "o" if t["state"] == "complete" else "x"
        ax.scatter(t["number"], t["value"], marker=marker, color=STATE_COLOURS.get(t["state"], "k"), zorder=3)
        if t["state"] == "complete":
            best = t["value"] if best is None else max(best, t["value"])
        line.append((t["number"], best))
    line = [(n, b) for n, b in line if b is not None]
    if line:
        ax.step(*zip(*line, strict=True), where="post", color="#ff7f0e", label="best so far")
        ax.legend(loc="lower right")
    ax.set(xlabel="trial", ylabel=f"validation {metric}", title="Optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return save(fig, path, trials)


def plot_curves(curves: dict[int, dict[str, Any]], metric: str, path: Path) -> Path:
    """`curves`: trial number -> {state, values per epoch}; pruned trials grey, stopping where they were cut."""
    fig, ax = subplots(figsize=(6.4, 3.6))
    for _, c in sorted(curves.items()):
        epochs = np.arange(1, len(c["values"]) + 1)
        colour = STATE_COLOURS.get(c["state"], "k")
        ax.plot(epochs, c["values"], color=colour, alpha=0.9 if c["state"] == "complete" else 0.6, lw=1.2)
        if c["state"] == "pruned" and c["values"]:
            ax.scatter(epochs[-1], c["values"][-1], marker="x", color=colour)
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title="Trials epoch by epoch (grey: pruned)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return save(fig, path, {str(k): v for k, v in curves.items()})


def _axis(values: list[Any], log: bool) -> tuple[np.ndarray, list[str], list[float]]:
    """Values placed on 0..1, with tick labels: categories evenly, numbers by value (log where searched so)."""
    if any(isinstance(v, (str, bool)) for v in values):
        cats = sorted({str(v) for v in values})
        pos = np.array([cats.index(str(v)) / max(1, len(cats) - 1) for v in values])
        return pos, cats, [i / max(1, len(cats) - 1) for i in range(len(cats))]
    x = np.log10(np.array(values, float)) if log else np.array(values, float)
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo or 1.0
    ticks = [lo, hi]
    labels = [f"{10**t:.3g}" if log else f"{t:.3g}" for t in ticks]
    return (x - lo) / span, labels, [0.0, 1.0]


def plot_parallel(trials: list[dict[str, Any]], params: list[tuple[str, bool]], metric: str, path: Path) -> Path | None:
    """One axis per parameter (`params`: key and whether searched on a log scale), then the value; a line per
    complete trial, coloured by its value."""
    done = [t for t in trials if t["state"] == "complete" and all(k in t["params"] for k, _ in params)]
    if len(done) < 2:
        return None
    values = np.array([t["value"] for t in done])
    axes = [_axis([t["params"][k] for t in done], log) for k, log in params]
    axes.append(_axis(list(values), False))
    names = [k.split(".")[-1] for k, _ in params] + [metric]
    fig, ax = subplots(figsize=(max(6.4, 1.6 * len(names)), 3.8))
    norm = (values - values.min()) / ((values.max() - values.min()) or 1.0)
    for i in np.argsort(values):
        ax.plot(range(len(names)), [a[0][i] for a in axes], color=colormaps["viridis"](norm[i]), alpha=0.8, lw=1.5)
    for j, (_, labels, ticks) in enumerate(axes):
        ax.axvline(j, color="k", lw=0.8)
        for label, t in zip(labels, ticks, strict=True):
            ax.text(j + 0.03, t, label, fontsize=7, va="center")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.05, len(names) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title("Parameters of the complete trials (yellow: best)")
    return save(fig, path, {"params": [k for k, _ in params], "trials": done})


def plot_importance(importance: dict[str, float], path: Path) -> Path | None:
    """How much of the value's variance each parameter explains (fANOVA), largest on top."""
    if not importance:
        return None
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig, ax = subplots(figsize=(6.4, 0.5 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    ax.set(xlabel="share of the value's variance explained", title="Parameter importance")
    ax.set_xlim(0, 1)
    return save(fig, path, importance)
