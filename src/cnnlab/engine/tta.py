"""Test-time augmentation: a model's probabilities averaged over views of its input (mirrored, shifted,
resized), for evaluation batches and for the tiles of a photo alike."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import RunConfig

Probs = Callable[[torch.Tensor], torch.Tensor]  # model input -> float32 probabilities


@dataclass(frozen=True)
class Views:
    """The views averaged: mirrored (`flip`), shifted `shift` px up, down, left and right (classification),
    and resized by each of `scales`, the probabilities resized back (segmentation)."""

    flip: bool = False
    shift: int = 0
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def of(cls, cfg: RunConfig, final: bool = True) -> Views:
        """The views the run's recipe evaluates with. `final=False` keeps the mirror only: per-epoch
        validation, where 10 views of 6000 images would cost ~10 s an epoch."""
        t = cfg.train
        return cls(t.tta_flip, t.tta_shift if final else 0, tuple(t.tta_scales) if final else (1.0,))

    @property
    def shifts(self) -> list[tuple[int, int]]:
        """(down, right) offsets: none, then `shift` px each way."""
        s = self.shift
        return [(0, 0), (s, 0), (-s, 0), (0, s), (0, -s)] if s else [(0, 0)]

    def __len__(self) -> int:
        return len(self.shifts) * len(self.scales) * (1 + self.flip)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx) pixels (down, right), filling with zeros."""
    if not (dy or dx):
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    return padded[..., max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w]


def average(
    probs: Probs,
    x: torch.Tensor,
    views: Views,
    unflip: Callable[[torch.Tensor], torch.Tensor],
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`probs` of every view of `x`, averaged. A shift moves `x` as given (uint8 pixels: the border fills
    black, as a shifted photo would), then `prepare` makes the model's input of it; `unflip` maps the
    probabilities of a mirrored input back (a class map is mirrored back, class scores stay)."""
    total: torch.Tensor | int = 0
    for (dy, dx), scale in itertools.product(views.shifts, views.scales):
        xs = shift(x, dy, dx)
        xs = prepare(xs) if prepare is not None else xs
        size = xs.shape[-2:]
        if scale != 1:
            xs = F.interpolate(xs, scale_factor=scale, mode="bilinear", align_corners=False)
        q = probs(xs)
        if views.flip:
            q = q + unflip(probs(xs.flip(-1)))
        total = total + (q if scale == 1 else F.interpolate(q, size=size, mode="bilinear", align_corners=False))
    return total / len(views)
