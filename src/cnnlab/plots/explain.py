"""Figures that explain what a network learned: class activation maps, attributions, feature maps, the
filters of deeper layers, calibration and, for segmentation, where the model is unsure (the embedding of
the penultimate features has plots/embedding.py). Each `plot_*` writes NAME.png and the numbers behind it
as NAME.json."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .canvas import save, subplots
from .figures import class_legend
from .overlays import _np, _rgb, colorize, heat_overlay, mass_centre, mosaic

CAM_LABEL = "Grad-CAM (0: no evidence, 1: strongest)"


def _colorbar(fig: Figure, mappable: Any, label: str, **kw: Any) -> Any:
    cb = fig.colorbar(mappable, **kw)
    cb.set_label(label, fontsize=7)
    cb.ax.tick_params(labelsize=7)
    return cb


def _side_colorbar(fig: Figure, axes: Sequence[Axes], mappable: Any, label: str) -> Any:
    """A colour bar just right of the images drawn in `axes`, once laid out: equal-aspect images are often
    narrower than their axes, and a bar at a fixed place would float away from them."""
    boxes = []
    for ax in axes:
        ax.apply_aspect()
        boxes.append(ax.get_position())
    x1, y0, y1 = max(b.x1 for b in boxes), min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    width = fig.get_figwidth()
    cax = fig.add_axes((x1 + 0.15 / width, y0 + 0.1 * (y1 - y0), 0.15 / width, 0.8 * (y1 - y0)))
    return _colorbar(fig, mappable, label, cax=cax)


def _cam_mappable(cmap: str = "jet") -> ScalarMappable:
    # Overlays are RGB images, so their colour bar needs a stand-in carrying the scale heat_overlay used.
    return ScalarMappable(Normalize(0, 1), cmap)


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_frame_on(False)


def plot_cam_examples(
    images: torch.Tensor,
    cams: torch.Tensor,
    true: torch.Tensor,
    pred: torch.Tensor,
    conf: torch.Tensor,
    classes: Sequence[str],
    picks: dict[int, tuple[list[int], list[int]]],
    path: Path,
    title: str,
    index: Sequence[int] | None = None,
) -> Path:
    """Per true class (a row) the picked correctly and wrongly classified images with their Grad-CAM
    overlaid, labelled with the predicted class and its confidence. `index`: each image's number in its
    split, which the JSON names them by (default: their position here)."""
    index = list(index) if index is not None else list(range(len(images)))
    side_h, side_w, gap = images.shape[-2], images.shape[-1], 4
    per = max([1] + [max(len(r), len(w)) for r, w in picks.values()])
    cols, order = 2 * per, list(picks)
    fig, axes = subplots(len(order), 1, figsize=(cols * 1.45 + 2.4, len(order) * 1.55 + 0.6), squeeze=False)
    chosen: dict[str, dict[str, list[int]]] = {}
    centres: dict[int, list[float] | None] = {}
    for ax, c in zip(axes[:, 0], order, strict=True):
        right, wrong = ([int(i) for i in ids] for ids in picks[c])
        chosen[classes[c]] = {"correct": [index[i] for i in right], "wrong": [index[i] for i in wrong]}
        # One pasted row per axes, as in plot_examples: a handful of imshows draw far faster than dozens.
        row = np.ones((side_h, cols * (side_w + gap) - gap, 3))
        for k, i in enumerate(right + [None] * (per - len(right)) + wrong):
            if i is None:
                continue
            x0 = k * (side_w + gap)
            row[:, x0 : x0 + side_w] = heat_overlay(images[i], cams[i]) / 255
            centres[index[i]] = mass_centre(cams[i])
            ok = k < per
            ax.text(x0 + side_w / 2, -1, f"{'✓' if ok else '✗'} {classes[int(pred[i])]} ({float(conf[i]):.0%})",
                    ha="center", va="bottom", fontsize=7, color="green" if ok else "red")  # fmt: skip
        ax.imshow(row, interpolation="nearest")
        _bare(ax)
        ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{title}\ntrue class per row: correct (green), wrong (red: predicted label)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1 - 0.15 / fig.get_figheight()))
    cb = _side_colorbar(fig, axes[:, 0], _cam_mappable(), "Grad-CAM evidence")
    cb.set_ticks([0, 0.5, 1], labels=["0 none", "0.5", "1 strongest"])
    data = {"classes": list(classes), "picks": chosen, "cam_mass_centre": centres}
    return save(fig, path, data, layout=False)


def plot_attributions(
    image: torch.Tensor,
    panels: list[tuple[str, torch.Tensor, str]],
    top: list[tuple[str, float]],
    path: Path,
    title: str,
) -> Path:
    """One classified image, its explanation maps (kind "cam": overlaid, 0..1; kind "signed": alone on a
    symmetric red-blue scale) and a bar chart of the top class probabilities."""
    bad = [kind for _, _, kind in panels if kind not in ("cam", "signed")]
    if bad:
        raise ValueError(f"panel kind must be 'cam' or 'signed', got {bad[0]!r}")
    n = len(panels) + 2
    cols = n if n <= 6 else math.ceil(n / 2)
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(cols * 3.0, rows * 2.8 + 0.5), squeeze=False)
    flat = axes.ravel()
    flat[0].imshow(_rgb(image), interpolation="nearest")
    flat[0].set_title("input", fontsize=8)
    stats = []
    for ax, (caption, amap, kind) in zip(flat[1:], panels, strict=False):
        m = _np(amap)
        if kind == "cam":
            ax.imshow(heat_overlay(image, amap), interpolation="nearest")
            _colorbar(fig, _cam_mappable(), CAM_LABEL, ax=ax, fraction=0.046, pad=0.03)
        else:
            lim = max(float(np.abs(m).max()), 1e-12)  # symmetric, so white is exactly zero
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            _colorbar(fig, im, "attribution\n(red: for the class, blue: against)", ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(caption, fontsize=8)
        stats.append({"min": float(m.min()), "max": float(m.max()), "sum": float(m.sum())})
    for ax in flat[: n - 1]:
        ax.axis("off")
    bar = flat[n - 1]
    names, probs = [t[0] for t in top], [float(t[1]) for t in top]
    bars = bar.barh(np.arange(len(top)), probs, color=["tab:blue"] + ["tab:gray"] * (len(top) - 1))
    bar.bar_label(bars, labels=[f"{p:.1%}" for p in probs], fontsize=7, padding=2)
    bar.set_yticks(np.arange(len(top)), names, fontsize=8)
    bar.invert_yaxis()  # most probable on top
    bar.set_xlim(0, 1.3)  # room for the percentages
    bar.set_xticks([0, 0.5, 1])
    bar.tick_params(axis="x", labelsize=7)
    bar.set_xlabel("probability", fontsize=8)
    bar.set_title("top classes", fontsize=8)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    data = {"top": [[c, p] for c, p in zip(names, probs, strict=True)], "panels": [p[0] for p in panels]}
    return save(fig, path, {**data, "stats": stats})


def plot_feature_maps(
    images: torch.Tensor, names: list[str], maps: torch.Tensor, layer: str, path: Path, channels: int = 12
) -> Path:
    """Feature maps (K,C',h,w) of one layer for K images (rows): the `channels` channels of largest mean
    |activation| over the K images, the same for every row, on one colour scale."""
    m = maps.detach().float().cpu()
    k, c, h, w = m.shape
    mean_abs = m.abs().mean((0, 2, 3))
    chosen = torch.argsort(mean_abs, descending=True, stable=True)[: min(channels, c)]
    shown = m[:, chosen]
    # One scale for all tiles so channels and images compare; symmetric when the layer has negatives.
    if bool((m < 0).any()):
        lim = max(float(shown.abs().max()), 1e-12)
        cmap, vmin, vmax = "RdBu_r", -lim, lim
    else:
        cmap, vmin, vmax = "viridis", 0.0, max(float(shown.max()), 1e-12)
    n = len(chosen)
    ratios = [images.shape[-1] / images.shape[-2], (n * (w + 1) - 1) / h]
    row_h = min(1.1, 12.5 / sum(ratios))
    fig, axes = subplots(k, 2, figsize=(sum(ratios) * row_h + 2.2, k * row_h * 1.15 + 0.9), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})  # fmt: skip
    im = None
    for r in range(k):
        axes[r, 0].imshow(_rgb(images[r]), interpolation="nearest")
        axes[r, 0].set_ylabel(names[r], rotation=0, ha="right", va="center", fontsize=8)
        im = axes[r, 1].imshow(mosaic(shown[r], 1, n), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        for ax in axes[r]:
            _bare(ax)
    axes[0, 0].set_title("input", fontsize=7)
    for j, ch in enumerate(chosen.tolist()):
        axes[0, 1].text(j * (w + 1) + (w - 1) / 2, -0.8, f"ch {ch}", ha="center", va="bottom", fontsize=7)
    head = f"Feature maps of {layer} ({c} x {h} x {w}): the {n} channels of largest mean |activation|"
    fig.suptitle(f"{head} over {k} images", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.0 / fig.get_figwidth(), 0.97))
    _side_colorbar(fig, axes[:, 1], im, "activation")
    data = {"layer": layer, "shape": [c, h, w], "channels": chosen.tolist(), "mean_abs": mean_abs[chosen].tolist()}
    return save(fig, path, data, layout=False)


def plot_top_filters(weight: torch.Tensor, path: Path, title: str, top: int = 16, slices: int = 8) -> Path:
    """Kernels (out, in, k, k) of a deeper layer: the `top` output filters of largest L2 norm (rows, largest
    first), each as its `slices` input-channel slices of largest norm, on one symmetric scale."""
    w = weight.detach().float().cpu()
    out_c, in_c, kh, kw = w.shape
    norms = w.flatten(1).norm(dim=1)
    filters = torch.argsort(norms, descending=True, stable=True)[: min(top, out_c)]
    s = min(slices, in_c)
    picks = [torch.argsort(w[f].flatten(1).norm(dim=1), descending=True, stable=True)[:s] for f in filters]
    tiles = torch.stack([w[f, p] for f, p in zip(filters, picks, strict=True)]).reshape(-1, kh, kw)
    gap = max(1, math.ceil(kh / 3))  # room for each tile's caption, even for 7x7 kernels
    img = mosaic(tiles, len(filters), s, gap)
    lim = max(float(tiles.abs().max()), 1e-12)
    inch = min(0.16, 9.5 / img.shape[0], 8 / img.shape[1])
    fig, ax = subplots(figsize=(img.shape[1] * inch + 3.0, img.shape[0] * inch + 1.4))
    im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    for r, p in enumerate(picks):
        for j, i in enumerate(p.tolist()):
            x, y = j * (kw + gap) + (kw - 1) / 2, r * (kh + gap) - 0.55
            ax.text(x, y, f"in {i}", ha="center", va="bottom", fontsize=5.5, color="0.3")
    ax.set_yticks([r * (kh + gap) + (kh - 1) / 2 for r in range(len(filters))],
                  [f"filter {int(f)} (|w| {float(norms[f]):.2f})" for f in filters], fontsize=7)  # fmt: skip
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_frame_on(False)
    ax.set_xlabel(f"per filter its {s} input-channel slices of largest |w| (caption: input channel)", fontsize=7)
    # The extra pad keeps the title clear of the first row's captions.
    ax.set_title(title, fontsize=9, pad=12)
    _colorbar(fig, im, "weight", ax=ax, fraction=0.05, pad=0.03)
    data = {"shape": list(w.shape), "filters": filters.tolist(), "norms": norms[filters].tolist(),
            "slices": [p.tolist() for p in picks]}  # fmt: skip
    return save(fig, path, data)


def plot_reliability(cal: dict, path: Path, title: str) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap to each bin's mean
    confidence in red, and below it how many predictions fall in each bin."""
    edges = np.asarray(cal["edges"], dtype=float)
    conf, acc = np.asarray(cal["confidence"], dtype=float), np.asarray(cal["accuracy"], dtype=float)
    count = np.asarray(cal["count"], dtype=float)
    left, width = edges[:-1], np.diff(edges)
    seen = (count > 0) & np.isfinite(acc) & np.isfinite(conf)
    fig, (ax, axc) = subplots(2, 1, figsize=(5.8, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    x, bw = left[seen], width[seen]
    ax.bar(x, acc[seen], bw, align="edge", color="tab:blue", edgecolor="black", lw=0.5, label="accuracy")
    ax.bar(x, np.abs(conf - acc)[seen], bw, bottom=np.minimum(acc, conf)[seen], align="edge", color="red", alpha=0.3,
           hatch="//", edgecolor="red", lw=0.5, label="gap to mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    axc.bar(left, count, width, align="edge", color="tab:gray", edgecolor="black", lw=0.5)
    positive = count[count > 0]
    if len(positive) and positive.max() > 100 * positive.min():
        axc.set_yscale("log")  # a few large bins would otherwise flatten all the others to nothing
    axc.set_ylabel("predictions", fontsize=8)
    axc.set_xlabel("confidence (probability of the predicted class)")
    axc.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}: ECE {float(cal['ece']):.3f}", fontsize=10)
    return save(fig, path, {**cal, "ece": float(cal["ece"])})


def plot_confidence_cases(
    images: torch.Tensor,
    truths: torch.Tensor | None,
    preds: torch.Tensor,
    conf: torch.Tensor,
    entropy: torch.Tensor,
    names: list[str],
    scores: list[float] | None,
    classes: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    path: Path,
    title: str,
    max_entropy: float,
) -> Path:
    """Segmentation rows of image | ground truth | prediction | confidence | entropy: where the model is
    unsure, next to where it is wrong. A photo without a ground truth (`truths`, `scores` None) leaves
    that column out."""
    n = len(images)
    heads = ("image", "ground truth", "prediction", "confidence", "entropy")
    if truths is None:
        heads = tuple(h for h in heads if h != "ground truth")
    cols = len(heads)
    # Constrained layout: it keeps the row titles clear of the images above and puts each colour bar under
    # its own column, which tight_layout does not for axes without frames.
    fig, axes = subplots(n, cols, figsize=(2.6 * cols, 2.6 * n + 1.3), squeeze=False, layout="constrained")
    for r in range(n):
        truth = [] if truths is None else [colorize(truths[r].cpu(), colors)]
        panels = (_rgb(images[r]), *truth, colorize(preds[r].cpu(), colors))
        for c, img in enumerate(panels):
            axes[r, c].imshow(img, interpolation="nearest")
        im_conf = axes[r, cols - 2].imshow(_np(conf[r]), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        im_ent = axes[r, cols - 1].imshow(
            _np(entropy[r]), cmap="magma", vmin=0, vmax=max_entropy, interpolation="nearest"
        )
        for c, head in enumerate(heads):
            axes[r, c].axis("off")
            score = f" (mIoU {scores[r]:.2f})" if head == "prediction" and scores is not None else ""
            axes[r, c].set_title(f"{names[r]}: {head}{score}", fontsize=8)
    for c, label, im in ((cols - 2, "confidence", im_conf), (cols - 1, "entropy (nats)", im_ent)):
        _colorbar(fig, im, label, ax=axes[:, c], location="bottom", shrink=0.9, aspect=25)
    class_legend(fig, classes, colors, loc="outside lower center")
    fig.suptitle(title, fontsize=10)
    data = {"names": names, "mean_iou": scores, "mean_confidence": [float(x.float().mean()) for x in conf],
            "mean_entropy": [float(x.float().mean()) for x in entropy]}  # fmt: skip
    return save(fig, path, data, layout=False)


def plot_class_cams(
    image: torch.Tensor,
    cams: dict[str, torch.Tensor],
    pred: torch.Tensor,
    colors: Sequence[tuple[int, int, int]],
    classes: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """One segmented photo: the photo, its predicted label map and one Grad-CAM overlay per class."""
    n = len(cams) + 2
    rows = 2 if n > 4 else 1
    cols = math.ceil(n / rows)
    # Constrained layout, as in plot_confidence_cases: tight_layout lets frameless titles touch the row above.
    fig, axes = subplots(rows, cols, figsize=(cols * 3.0 + 1.2, rows * 3.0 + 1.0), squeeze=False,
                             layout="constrained")  # fmt: skip
    flat = axes.ravel()
    flat[0].imshow(_rgb(image), interpolation="nearest")
    flat[0].set_title("photo", fontsize=8)
    flat[1].imshow(colorize(pred.cpu(), colors), interpolation="nearest")
    flat[1].set_title("prediction", fontsize=8)
    for ax, (name, cam) in zip(flat[2:], cams.items(), strict=False):
        ax.imshow(heat_overlay(image, cam), interpolation="nearest")
        ax.set_title(f"CAM: {name}", fontsize=8)
    for ax in flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _colorbar(fig, _cam_mappable(), CAM_LABEL, ax=axes, shrink=0.8, aspect=30)
    class_legend(fig, classes, colors, loc="outside lower center")
    data = {"classes": list(cams), "mass_centre": {k: mass_centre(v) for k, v in cams.items()},
            "peak": {k: float(torch.as_tensor(v).max()) for k, v in cams.items()}}  # fmt: skip
    return save(fig, path, data, layout=False)
