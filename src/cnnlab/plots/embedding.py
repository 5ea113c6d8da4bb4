"""The embedding figure: penultimate features in two dimensions, coloured by class, and which classes mix."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from .canvas import save, subplots
from .overlays import _rgb


def _neighbour_labels(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """(N, k) labels of every point's k nearest other points in the embedding."""
    from sklearn.neighbors import NearestNeighbors  # here: the module imports without scikit-learn

    k = min(k, len(xy) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy)
    # Drop each point itself; with duplicate points it need not come first, so drop it by index.
    own = idx == np.arange(len(xy))[:, None]
    own[~own.any(1), -1] = True
    return labels[idx[~own].reshape(len(xy), k)]


def _thumb_points(pts: np.ndarray, n: int) -> list[int]:
    """Indices of n points of one class for thumbnails: in the class's dense inner half, the first nearest
    its median, each next farthest from those chosen (thumbnails then cover each other less)."""
    inner = np.argsort(np.linalg.norm(pts - np.median(pts, 0), axis=1))[: max(n, math.ceil(len(pts) / 2))]
    chosen = [int(inner[0])]
    while len(chosen) < min(n, len(inner)):
        dist = np.linalg.norm(pts[inner][:, None] - pts[chosen][None], axis=2).min(1)
        chosen.append(int(inner[int(np.argmax(dist))]))
    return chosen


def plot_embedding(
    xy: np.ndarray,
    labels: torch.Tensor,
    classes: Sequence[str],
    colors: Sequence[str],
    images: torch.Tensor,
    method: str,
    path: Path,
    thumbs_per_class: int = 2,
) -> Path:
    """2-D embedding (N,2) of penultimate features coloured by class, with a few thumbnails per class, and
    per class the share of its points' 10 nearest neighbours from another class (the classes it mixes with)."""
    xy = np.asarray(xy, dtype=float)
    lab = torch.as_tensor(labels).cpu().numpy().astype(int)
    near = _neighbour_labels(xy, lab) if len(xy) > 1 else np.zeros((len(xy), 0), dtype=int)
    overlap: dict[str, dict[str, Any]] = {}
    fig, ax = subplots(figsize=(9.5, 7))
    size = 4 if len(xy) > 3000 else 10
    for c, name in enumerate(classes):
        members = np.flatnonzero(lab == c)
        if not len(members):
            overlap[name] = {"mixed": None, "with": None}
            continue
        nb = near[members]
        other = nb[nb != c]
        mixed = float((nb != c).mean()) if nb.size else 0.0
        common = Counter(other.tolist()).most_common(1)
        overlap[name] = {"mixed": round(mixed, 4), "with": classes[common[0][0]] if common else None}
        ax.scatter(*xy[members].T, s=size, color=colors[c], alpha=0.6, lw=0, label=f"{name} ({mixed:.0%} mixed)")
        for i in members[_thumb_points(xy[members], thumbs_per_class)] if thumbs_per_class > 0 else []:
            thumb = OffsetImage(_rgb(images[i]), zoom=26 / images.shape[-1], interpolation="nearest")
            ax.add_artist(AnnotationBbox(thumb, tuple(xy[i]), pad=0.1, bboxprops={"edgecolor": colors[c], "lw": 1.5}))
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(f"Penultimate features of {len(xy)} images ({method})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, markerscale=2.5, frameon=False,
              title="class (share of 10 nearest\nneighbours from other classes)", title_fontsize=7)  # fmt: skip
    ax.grid(alpha=0.2)
    data = {"method": method, "n": len(xy), "overlap": overlap, "points": np.round(xy, 3).tolist(),
            "labels": lab.tolist()}  # fmt: skip
    return save(fig, path, data)
