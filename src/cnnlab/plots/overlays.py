"""Pictures as plain arrays, for figures, the web server and label maps alike: maps drawn over images (class
activation, confidence) through a colour map, label maps in class colours, tiles in a mosaic. Nothing here
imports matplotlib until a colour map is needed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _rgb(image: torch.Tensor) -> np.ndarray:
    """(C,H,W) uint8 with C 1 or 3 to (H,W,3) floats in [0, 1]."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C,H,W) with C 1 or 3, got shape {tuple(image.shape)}")
    arr = image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32) / 255
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _np(t: torch.Tensor) -> np.ndarray:
    return torch.as_tensor(t).detach().float().cpu().numpy()


def heat_overlay(
    image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, cmap: str = "jet", weighted: bool = True
) -> np.ndarray:
    """Image (C,H,W) uint8 blended with heat (H,W) in [0, 1] (clipped) through a matplotlib colour map:
    an (H,W,3) uint8 RGB array. The colour's weight is alpha * heat (`weighted`), so where there is no
    heat the image shows unchanged; or alpha everywhere, for a map whose low values matter too."""
    from matplotlib import colormaps  # here: a label map's colours need no matplotlib

    rgb = _rgb(image)
    h = np.clip(np.nan_to_num(_np(heat)), 0, 1)
    if h.shape != rgb.shape[:2]:
        raise ValueError(f"heat map shape {h.shape} does not match the image's {rgb.shape[:2]}")
    weight = alpha * h[..., None] if weighted else alpha
    out = rgb * (1 - weight) + colormaps[cmap](h)[..., :3] * weight
    return np.rint(out * 255).astype(np.uint8)


def mass_centre(heat: torch.Tensor) -> list[float] | None:
    """(row, col) centre of mass of a non-negative map as fractions of its height and width (pixel
    centres, so a map of ones gives 0.5, 0.5); None for an all-zero map."""
    h = torch.as_tensor(heat).detach().double().cpu().clamp_min(0)
    total = float(h.sum())
    if total <= 0:
        return None
    rows = (torch.arange(h.shape[0], dtype=torch.double) + 0.5) / h.shape[0]
    cols = (torch.arange(h.shape[1], dtype=torch.double) + 0.5) / h.shape[1]
    return [round(float((h.sum(1) * rows).sum()) / total, 4), round(float((h.sum(0) * cols).sum()) / total, 4)]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """ "#RRGGBB" -> (r, g, b)."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def colorize(labels: torch.Tensor, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(H,W) class indices to an (H,W,3) uint8 colour image; values past the classes (an ignore value)
    are white."""
    palette = np.full((256, 3), 255, dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    return palette[labels.numpy().astype(np.uint8)]


def mosaic(tiles: torch.Tensor, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """(N,k,k) tiles into one (rows*(k+gap), cols*(k+gap)) image with NaN gaps (one imshow, not N)."""
    n, kh, kw = tiles.shape
    out = torch.full((rows * (kh + gap) - gap, cols * (kw + gap) - gap), float("nan"))
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (kh + gap) : r * (kh + gap) + kh, c * (kw + gap) : c * (kw + gap) + kw] = tiles[i]
    return out.numpy()
