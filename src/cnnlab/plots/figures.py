"""The run report's analysis figures: curves, learning rate, per-class results, confusion matrices,
examples, filters, segmentation cases and the activation sweep (saving: `canvas`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..attribution import pick_examples
from .canvas import save, subplots
from .overlays import colorize, mosaic


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < window:
        return v
    return np.convolve(v, np.ones(window) / window, mode="valid")


def plot_curves(history: list[dict], path: Path, metric: str = "acc", metric_label: str = "accuracy") -> Path:
    """Loss and accuracy over training, per batch (smoothed) and per epoch, training and validation, one
    plot each; a task whose headline metric is another (`metric`) gets a third plot of it. The JSON holds
    every series drawn, the raw batch log (step, loss, accuracy, learning rate) and which plot shows what."""
    batches = [r for r in history if r["kind"] == "batch"]
    epochs = [r for r in history if r["kind"] == "epoch"]
    steps_per_epoch = epochs[0]["step"] if epochs else max(1, len(batches))
    window = max(1, steps_per_epoch // 10)
    ep = [r["epoch"] for r in epochs]
    data: dict[str, Any] = {
        "steps_per_epoch": steps_per_epoch,
        "smoothing_window": window,
        "epoch": ep,
        "batch_step": [r["step"] for r in batches],
        "batch_loss": [r["loss"] for r in batches],
        "batch_acc": [r["acc"] for r in batches],
        "batch_lr": [r["lr"] for r in batches],
    }
    acc_label = "accuracy" if metric == "acc" else "pixel accuracy"
    panels = [("loss", "loss", "Loss"), ("acc", acc_label, acc_label.capitalize())]
    if metric != "acc":
        panels.append((metric, metric_label, f"Validation {metric_label}"))
    # One y-axis per plot: two scales sharing one plot are easily misread.
    fig, axes = subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    data["plots"] = []
    for ax, (key, label, title) in zip(axes[0], panels, strict=True):
        drawn = []
        if batches and key in ("loss", "acc"):
            x = np.array(data["batch_step"]) / steps_per_epoch
            y = smooth(data[f"batch_{key}"], window)
            data["smoothed_epoch"] = x[len(x) - len(y) :].tolist()
            data[f"smoothed_{key}"] = y.tolist()
            ax.plot(data["smoothed_epoch"], y, color="tab:blue", alpha=0.35, lw=1, label=f"train {label} (per batch)")
            drawn.append(f"smoothed_{key}")
        if key in ("loss", "acc"):
            data[f"train_{key}"] = [r[f"train_{key}"] for r in epochs]
            ax.plot(ep, data[f"train_{key}"], "o-", color="tab:blue", label=f"train {label} (epoch mean)")
            drawn.append(f"train_{key}")
        data[f"val_{key}"] = [r.get(f"val_{key}") for r in epochs]
        ax.plot(ep, data[f"val_{key}"], "s-", color="tab:orange" if key in ("loss", "acc") else "tab:green",
                label=f"validation {label}")  # fmt: skip
        drawn.append(f"val_{key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        data["plots"].append({"title": title, "ylabel": label, "series": drawn})
    return save(fig, path, data)


def plot_learning_rate(history: list[dict], path: Path, schedule: str) -> Path:
    """The learning rate of every training batch against the epoch (x: step / steps per epoch)."""
    batches = [r for r in history if r["kind"] == "batch"]
    epochs = [r for r in history if r["kind"] == "epoch"]
    steps_per_epoch = epochs[0]["step"] if epochs else max(1, len(batches))
    steps = [r["step"] for r in batches]
    lr = [r["lr"] for r in batches]
    fig, ax = subplots(figsize=(5.5, 3.2))
    ax.plot(np.array(steps) / steps_per_epoch, lr, color="tab:purple", lw=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Learning rate per batch ({schedule} schedule)", fontsize=10)
    return save(fig, path, {"schedule": schedule, "steps_per_epoch": steps_per_epoch, "step": steps, "lr": lr})


def plot_per_class_over_epochs(
    epochs: list[int],
    values: list[list[float]],
    classes: Sequence[str],
    path: Path,
    ylabel: str,
    colors: Sequence[str] | None = None,
) -> Path:
    fig, ax = subplots(figsize=(8, 4.5))
    arr = np.array(values, dtype=float)
    for c, name in enumerate(classes):
        ax.plot(epochs, arr[:, c], "o-", ms=3, label=name, color=colors[c] if colors else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(classes) > 5 else 1, loc="lower right")
    ax.set_title(f"Validation {ylabel} per class")
    return save(fig, path, {"epoch": epochs, "classes": list(classes), "values": arr})


def plot_per_class_table(
    columns: dict[str, list[float]], classes: Sequence[str], path: Path, title: str, colors: Sequence[str] | None = None
) -> Path:
    """Grouped bars per class for each column (e.g. validation and test), with the numbers printed."""
    fig, ax = subplots(figsize=(max(7, len(classes) * 0.9), 4.2))
    width = 0.8 / len(columns)
    for j, (name, vals) in enumerate(columns.items()):
        xs = np.arange(len(classes)) + (j - (len(columns) - 1) / 2) * width
        bars = ax.bar(
            xs,
            np.nan_to_num(np.array(vals, dtype=float)),
            width,
            label=name,
            color=colors if colors and len(columns) == 1 else None,
            edgecolor="black",
            lw=0.5,
        )
        ax.bar_label(bars, labels=[f"{v:.2f}" if v == v else "n/a" for v in vals], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path, {"classes": list(classes), **columns})


def plot_confusion(cm: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    """Counts and row-normalised confusion matrices side by side (rows: truth, columns: prediction)."""
    counts = cm.double()
    norm = counts / counts.sum(1, keepdim=True).clamp_min(1)
    fig, axes = subplots(1, 2, figsize=(14, 6))
    for ax, mat, fmt, name in ((axes[0], counts, "{:.0f}", "counts"), (axes[1], norm, "{:.2f}", "row-normalised")):
        ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    fmt.format(mat[i, j].item()),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({name})")
    return save(fig, path, {"classes": list(classes), "counts": cm, "normalised": norm})


def plot_examples(
    images: torch.Tensor,
    true: torch.Tensor,
    pred: torch.Tensor,
    conf: torch.Tensor,
    classes: Sequence[str],
    path: Path,
    per_class: int = 2,
) -> Path:
    """For each class (a row), `per_class` correctly and `per_class` wrongly classified images."""
    n, cols, side, gap = len(classes), 2 * per_class, images.shape[-1], 4
    # One axes per row with the tiles pasted side by side: ten axes draw far faster than forty.
    fig, axes = subplots(n, 1, figsize=(cols * 1.6 + 1.4, n * 1.55))
    chosen: dict[str, dict[str, list[int]]] = {}
    picks = pick_examples(true, pred, n, per_class)
    for c, ax in enumerate(np.atleast_1d(axes)):
        right, wrong = picks[c]
        chosen[classes[c]] = {"correct": right, "wrong": wrong}
        rgb = images.shape[1] == 3
        row = np.full((side, cols * (side + gap), 3), 1.0) if rgb else np.full((side, cols * (side + gap)), np.nan)
        for k, i in enumerate(right + [None] * (per_class - len(right)) + wrong):
            if i is None or k >= cols:
                continue
            x0 = k * (side + gap)
            row[:, x0 : x0 + side] = images[i].permute(1, 2, 0).numpy() / 255 if rgb else images[i, 0].numpy()
            ok = k < per_class
            ax.text(
                x0 + side / 2,
                -1,
                f"{'✓' if ok else '✗'} {classes[int(pred[i])]} ({conf[i]:.0%})",
                ha="center",
                va="bottom",
                fontsize=7,
                color="green" if ok else "red",
            )
        ax.imshow(row, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
        ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(
        f"True class per row: {per_class} correct (green) and {per_class} wrong (red: predicted label)", fontsize=9
    )
    return save(
        fig,
        path,
        {
            "indices": chosen,
            "wrong_predictions": {k: [classes[int(pred[i])] for i in v["wrong"]] for k, v in chosen.items()},
        },
    )


def plot_filters(weight: torch.Tensor, path: Path, title: str) -> Path:
    """Conv kernels (out, in, k, k): one tile per filter when in == 1, else a grid of in (rows) x out (cols)."""
    w = weight.detach().float().cpu()
    out_c, in_c, k, _ = w.shape
    if in_c == 1:
        cols = 8
        rows = math.ceil(out_c / cols)
        # Each first-layer filter is scaled on its own, as the reports show them (the pattern matters).
        t = w[:, 0]
        lo, hi = t.amin((1, 2), keepdim=True), t.amax((1, 2), keepdim=True)
        img, cmap, lim = mosaic((t - lo) / (hi - lo).clamp_min(1e-12), rows, cols), "gray", None
        xlabel, ylabel = f"{out_c} filters ({k}x{k}), each scaled to its own range", ""
    elif in_c * out_c <= 64 * 128:
        rows, cols = in_c, out_c
        img, cmap, lim = mosaic(w.transpose(0, 1).reshape(-1, k, k), rows, cols), "RdBu_r", float(w.abs().max())
        xlabel, ylabel = f"output filter (1..{out_c})", f"input channel (1..{in_c})"
    else:  # too many kernels to read one by one: each output filter averaged over its inputs
        cols = 16
        rows = math.ceil(out_c / cols)
        img, cmap, lim = mosaic(w.mean(1), rows, cols), "RdBu_r", float(w.mean(1).abs().max())
        xlabel, ylabel = f"{out_c} filters, averaged over their {in_c} input channels", ""
    inch = min(14 / img.shape[1], 10 / img.shape[0], 0.12)  # inches per kernel pixel, aspect kept
    fig, ax = subplots(figsize=(1.2 + img.shape[1] * inch, 1.2 + img.shape[0] * inch))
    ax.imshow(img, cmap=cmap, vmin=-lim if lim else None, vmax=lim, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    return save(fig, path, {"shape": list(w.shape), "weights": w})


def class_legend(fig: Figure, classes: Sequence[str], colors: Sequence[tuple[int, int, int]], loc: str) -> None:
    """A row of class-colour swatches under a figure of label maps."""
    handles = [Patch(color=np.array(col) / 255, label=name) for name, col in zip(classes, colors, strict=True)]
    fig.legend(handles=handles, loc=loc, ncol=min(len(classes), 6), fontsize=8, frameon=False)


def plot_segmentation_cases(
    images: torch.Tensor,
    truths: torch.Tensor,
    preds: torch.Tensor,
    scores: list[float],
    names: list[str],
    classes: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    path: Path,
    title: str,
) -> Path:
    """Rows of image | ground truth | prediction in the class colours, with a legend."""
    n = len(images)
    fig, axes = subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for r in range(n):
        image = images[r].permute(1, 2, 0).numpy()
        image = image.squeeze(2) if image.shape[2] == 1 else image
        panels = (image, colorize(truths[r], colors), colorize(preds[r], colors))
        for c, (img, head) in enumerate(zip(panels, ("image", "ground truth", "prediction"), strict=True)):
            axes[r, c].imshow(img, interpolation="nearest", cmap="gray")
            axes[r, c].axis("off")
            axes[r, c].set_title(f"{names[r]}: {head}" + (f" (mIoU {scores[r]:.2f})" if c == 2 else ""), fontsize=8)
    class_legend(fig, classes, colors, loc="lower center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))  # room for the legend below
    # The images' size: the report's architecture table works out FLOPs for one input of it.
    data = {"names": names, "mean_iou": scores, "image_size": list(images.shape[-2:])}
    return save(fig, path, data, layout=False)


def plot_sweep(histories: dict[str, list[dict]], path: Path, metric: str = "acc") -> Path:
    """Validation loss and `metric` per epoch of several runs, overlaid."""
    fig, axes = subplots(1, 2, figsize=(11, 4))
    data: dict[str, Any] = {}
    for name, hist in histories.items():
        epochs = [r for r in hist if r["kind"] == "epoch"]
        ep = [r["epoch"] for r in epochs]
        data[name] = {
            "epoch": ep,
            "val_loss": [r["val_loss"] for r in epochs],
            f"val_{metric}": [r[f"val_{metric}"] for r in epochs],
        }
        axes[0].plot(ep, data[name]["val_loss"], "o-", ms=3, label=name)
        axes[1].plot(ep, data[name][f"val_{metric}"], "o-", ms=3, label=name)
    for ax, label in zip(axes, ("validation loss", f"validation {metric}"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path, data)
