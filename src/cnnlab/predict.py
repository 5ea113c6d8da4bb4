"""Predictions on the user's own images, for both tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data.images import load_photo
from .engine import load_model
from .tasks import get_task


def fashion_input(path: Path) -> tuple[torch.Tensor, list[str]]:
    """Any image -> uint8 (1,28,28) like Fashion-MNIST: grey, centred on a square, dark background."""
    img, notes = load_photo(path, mode="L", min_side=8)
    _, h, w = img.shape
    # The border colour is the background: pad with it so the garment keeps its aspect ratio.
    border = torch.cat([img[0, 0], img[0, -1], img[0, :, 0], img[0, :, -1]]).float()
    background = float(border.median())
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
    model, cfg = load_model(run_dir)
    task = get_task(cfg.task)
    if cfg.task == "facade":
        from .segment import segment_files

        return segment_files(model, task, paths, out or run_dir / "predictions")
    results = []
    for path in paths:
        x, notes = fashion_input(path)
        with torch.inference_mode():
            probs = model(task.eval_inputs(x[None]))[0].softmax(0)
        p, c = probs.topk(top)
        results.append(
            {
                "file": str(path),
                "notes": notes,
                "top": [(task.classes[i], float(q)) for q, i in zip(p, c.tolist(), strict=True)],
            }
        )
    return results
