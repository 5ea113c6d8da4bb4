"""Figures of the compare page (`report.compare`): curves of several runs overlaid, and each run's
per-class results against the best run's as diverging bars. They are drawn from the same numbers the
page writes to its JSON, so the picture and the file never disagree."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

DPI = 110
BEST_WIDTH, OTHER_WIDTH = 2.8, 1.4  # the best run's lines stand out by weight, not by a colour of its own
# Line style and marker face per split: hollow training points stay apart from validation ones even for
# one-epoch runs, which have no line to dash.
STYLES = {"train": ("--", "white", "training"), "val": ("-", None, "validation")}


def png_bytes(fig: Figure) -> tuple[bytes, tuple[int, int]]:
    """The figure as PNG bytes and its size in pixels."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    width, height = fig.canvas.get_width_height()
    return buf.getvalue(), (width, height)


def curves_figure(
    curves: dict[str, dict[str, list]],
    panels: Sequence[tuple[str, str, bool]],
    colors: dict[str, str],
    best: str | None,
) -> Figure:
    """One panel per quantity (`panels`: key such as "loss", title, percent axis), every run in its colour:
    training dashed and validation solid, where the run's series (`curves[label]["train_loss"]`, ...) exist."""
    fig = Figure(figsize=(11, 4.2), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for i, (ax, (key, title, percent)) in enumerate(zip(axes, panels, strict=True)):
        shown = set()
        for label, series in curves.items():
            width = BEST_WIDTH if label == best else OTHER_WIDTH
            for split, (style, face, _) in STYLES.items():
                values = series.get(f"{split}_{key}")
                if values is None or all(v is None for v in values):
                    continue
                y = [np.nan if v is None else v for v in values]
                ax.plot(series["epoch"], y, style, marker="o", ms=4, mfc=face, lw=width, color=colors[label])
                shown.add(split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _epoch_axis(ax, [e for series in curves.values() for e in series["epoch"]])
        if percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        # Which line is which run on the first panel only; every panel says which style is which split.
        handles = _run_handles(curves, colors, best) if i == 0 else []
        handles += [
            Line2D([], [], ls=style, marker="o", ms=4, mfc=face, color="0.35", label=name)
            for s, (style, face, name) in STYLES.items()
            if s in shown
        ]
        ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole epochs on the x axis; a lone epoch in the middle rather than at the edge of a tiny range."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(set(epochs)) == 1:
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)


def _run_handles(curves: dict[str, Any], colors: dict[str, str], best: str | None) -> list[Line2D]:
    return [
        Line2D([], [], color=colors[label], lw=BEST_WIDTH if label == best else OTHER_WIDTH,
               label=f"{label} (best)" if label == best else label)
        for label in curves
    ]  # fmt: skip


def difference_figure(
    classes: Sequence[str],
    panels: Sequence[tuple[str, dict[str, list[float | None]]]],
    colors: dict[str, str],
    reference: str,
    percent: bool,
) -> Figure:
    """Diverging horizontal bars: per class, each run's metric minus the reference run's (`panels`: a title
    and {run label: differences} per per-class metric); right of zero is better than the reference."""
    others = list(panels[0][1])
    n_rows = len(classes)
    height = max(3.0, 0.9 + n_rows * (0.18 * len(others) + 0.2))
    fig = Figure(figsize=(11 if len(panels) > 1 else 8.5, height), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    bar = 0.8 / max(1, len(others))
    scale = 100 if percent else 1  # accuracies in percentage points, AP and IoU as they are
    for ax, (title, diffs) in zip(axes, panels, strict=True):
        for j, label in enumerate(others):
            y = np.arange(n_rows) - 0.4 + bar * (j + 0.5)
            d = np.array([np.nan if v is None else v * scale for v in diffs[label]])
            ax.barh(y, np.nan_to_num(d), height=bar * 0.92, color=colors[label], label=label)
            if len(others) <= 3:
                for yy, v in zip(y, d, strict=True):
                    if np.isfinite(v):
                        ax.annotate(_signed(v, percent), (v, yy), xytext=(3 if v >= 0 else -3, 0),
                                    textcoords="offset points", ha="left" if v >= 0 else "right", va="center",
                                    fontsize=7)  # fmt: skip
        ax.axvline(0, color="0.2", lw=1)
        lim = max([1e-3 * scale, *(abs(v) * scale for r in diffs.values() for v in r if v is not None)])
        ax.set_xlim(-1.3 * lim, 1.3 * lim)  # symmetric: a loss and a gain of one size look alike
        ax.xaxis.set_major_locator(MaxNLocator(6, symmetric=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _signed(v, percent)))
        ax.set_title(f"{title}: run minus {reference}")
        ax.set_xlabel("difference (percentage points)" if percent else "difference")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(n_rows), list(classes))
    axes[0].invert_yaxis()  # the first class on top, as in the table
    axes[-1].legend(fontsize=8, loc="lower right")
    return fig


def _signed(v: float, percent: bool) -> str:
    return f"{v:+.1f}" if percent else f"{v:+.3f}"
