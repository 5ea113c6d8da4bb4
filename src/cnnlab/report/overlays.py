"""Maps drawn over images (class activation, confidence) as plain RGB arrays: for figures and for the web
server, which needs no plotting library, only a colour map."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps


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
