"""Fashion-MNIST, the built-in classification dataset: its facts, its files and its photo preparation."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data import Split
from ..data import fashion as data
from ..data.images import shrink
from . import palette
from .classify import ClassifyTask
from .fashion_photo import prepare

MIN_SIDE = 8  # px: below this a photo holds no garment worth guessing (Fashion-MNIST)
# px: 10x the 28 px the model sees, so each of its pixels still averages 100 or more; a larger image
# only costs memory (a 40-megapixel one padded to a square took 400 MB as floats).
MAX_SIDE = 280


def fashion_pixels(img: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """A user's decoded uint8 (1,H,W) grey or (3,H,W) colour photo -> (1,28,28) like Fashion-MNIST; adds to
    `notes` what it did. Raises NothingFound when no garment stands out from the background.

    An image over MAX_SIDE px on a side is shrunk first, so the work stays small whatever the caller
    decoded (`read_photo(..., max_side=MAX_SIDE)` spares the memory of decoding it at full size).
    The garment is then found, cropped, centred and normalised as the dataset's were (`fashion_photo`).
    """
    _, h, w = img.shape
    if max(h, w) > MAX_SIDE:
        img = shrink(img, MAX_SIDE)
        notes.append(f"downscaled {w}x{h} to {img.shape[2]}x{img.shape[1]}")
    x, more = prepare(img)
    notes.extend(more)
    return x, notes


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
    # Colour photos are decoded in colour although the model sees grey: a garment is found by its colour too.
    photo_mode = "any"

    def photo_input(self, img: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Any grey or colour photo of one garment -> 28x28 grey like Fashion-MNIST: cropped to it, centred,
        light on black. Raises NothingFound when no garment stands out from the background."""
        return fashion_pixels(img, [])
