"""Fashion-MNIST, the built-in classification dataset: its facts, its files and its photo preparation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..data import Split
from ..data import fashion as data
from ..data.images import shrink
from . import palette
from .classify import ClassifyTask

MIN_SIDE = 8  # px: below this a photo holds no garment worth guessing (Fashion-MNIST)
# px: 10x the 28 px the model sees, so each of its pixels still averages 100 or more; a larger image
# only costs memory (a 40-megapixel one padded to a square took 400 MB as floats).
MAX_SIDE = 280


def fashion_pixels(img: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """A user's decoded uint8 (1,H,W) grey image -> (1,28,28) like Fashion-MNIST; adds to `notes` what it did.

    An image over MAX_SIDE px on a side is shrunk first, so the work stays small whatever the caller
    decoded (`read_photo(..., max_side=MAX_SIDE)` spares the memory of decoding it at full size).
    """
    _, h, w = img.shape
    # The border colour is the background: pad with it so the garment keeps its aspect ratio.
    border = torch.cat([img[0, 0], img[0, -1], img[0, :, 0], img[0, :, -1]]).float()
    background = float(border.median())
    if max(h, w) > MAX_SIDE:
        img = shrink(img, MAX_SIDE)
        notes.append(f"downscaled {w}x{h} to {img.shape[2]}x{img.shape[1]}")
        _, h, w = img.shape
    if h != w:
        side = max(h, w)
        canvas = torch.full((1, side, side), background, dtype=torch.float32)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, top : top + h, left : left + w] = img.float()
        notes.append(f"padded {w}x{h} to a {side}x{side} square with the background colour")
    else:
        canvas = img.float()
    if (h, w) != (28, 28):
        canvas = F.interpolate(canvas[None], size=(28, 28), mode="area")[0]
        notes.append(f"resized {max(h, w)}x{max(h, w)} to 28x28")
    if background > 127:
        canvas = 255 - canvas
        notes.append("inverted: the background is light, Fashion-MNIST garments are light on black")
    return canvas.round().clamp(0, 255).to(torch.uint8), notes


class FashionTask(ClassifyTask):
    name = "fashion"
    classes = data.CLASSES
    colors = tuple(palette(10))
    mean, std = (data.MEAN,), (data.STD,)
    channels, image_size = 1, 28
    data_description = "Fashion-MNIST (Zalando): 28x28 grey images of 10 kinds of clothing"

    def load_data(self, cfg: RunConfig, progress: bool = True) -> dict[str, Split]:
        d = cfg.data
        return data.load(d.dir, val_fraction=d.val_fraction, seed=cfg.train.seed, limit=d.limit)

    def split_description(self, cfg: RunConfig) -> str:
        d = cfg.data
        limit = f"; training limited to the first {d.limit} images" if d.limit else ""
        return (
            f"{d.val_fraction:.0%} of the 60,000 training images held out for validation (stratified, seed "
            f"{cfg.train.seed}); test: the official 10,000 test images{limit}"
        )

    photo_sides = (MIN_SIDE, MAX_SIDE)

    def photo_input(self, img: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Any grey photo -> 28x28 like Fashion-MNIST: centred on a square, light garment on black."""
        return fashion_pixels(img, [])
