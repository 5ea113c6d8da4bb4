"""Predictions on the user's own images, for both tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data.images import load_photo, shrink
from .errors import ConfigError
from .outputs import check_dir
from .runs import load_model
from .tasks import Task, get_task

MIN_SIDE = 8  # px: below this a photo holds no garment worth guessing
# px: 10x the 28 px the model sees, so each of its pixels still averages 100 or more; a larger image
# only costs memory (a 40-megapixel one padded to a square took 400 MB as floats).
MAX_SIDE = 280


def fashion_input(path: Path) -> tuple[torch.Tensor, list[str]]:
    """Any image file -> uint8 (1,28,28) like Fashion-MNIST: grey, centred on a square, dark background."""
    return fashion_pixels(*load_photo(path, mode="L", min_side=MIN_SIDE, max_side=MAX_SIDE))


def fashion_pixels(img: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """`fashion_input` for a loaded uint8 (1,H,W) grey image; adds to `notes` what it did.

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


def predict_files(run_dir: Path, paths: list[Path], top: int = 3, out: Path | None = None) -> list[dict[str, Any]]:
    """Predictions of the model in `run_dir` on image files (see `cnnlab.predict`)."""
    model, cfg = load_model(run_dir)
    task = get_task(cfg.task)
    if cfg.task == "facade":
        from .pretrained import is_shipped
        from .segment import segment_files

        # A shipped model lives inside the installed package: its outputs go to the working folder.
        default = Path("predictions") if is_shipped(run_dir) else run_dir / "predictions"
        return segment_files(model, task, paths, check_dir(out or default, "--out"))
    if out is not None:
        raise ConfigError(f"out {out}: {cfg.task} predictions write no files; drop the out argument")
    results = []
    for path in paths:
        x, notes = fashion_input(path)
        results.append({"file": str(path), "notes": notes, "top": classify(model, task, x, top)})
    return results


@torch.inference_mode()
def classify(model: torch.nn.Module, task: Task, x: torch.Tensor, top: int = 3) -> list[tuple[str, float]]:
    """The `top` most likely classes of one uint8 (1,28,28) image, with their probabilities."""
    probs = model(task.eval_inputs(x[None]))[0].softmax(0)
    p, c = probs.topk(top)
    return [(task.classes[i], float(q)) for q, i in zip(p, c.tolist(), strict=True)]
