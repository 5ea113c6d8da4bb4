"""Segment the user's own facade photos: any size, tiled inference, label map + overlay + areas.

Scale matters more than size: the nets learned from 256x256 crops showing a good part of one
facade, so a photo is first resized so its longer side is `work_size` (default 512; smaller photos
are left as they are), then covered by overlapping 256x256 tiles whose class probabilities are
averaged where they overlap, and finally the probabilities are resized back to the photo's size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoint import atomic_write
from .data.images import load_photo
from .outputs import json_bytes, unique_stems
from .report.figures import colorize
from .tasks import Task
from .tasks.segment import hex_to_rgb

TILE, OVERLAP = 256, 64
MIN_SIDE = 32  # px: smaller than a window of the training crops
# px: photos are decoded at most this large. Segmentation runs at `work_size` anyway; the outputs at full
# size cost ~100 bytes a pixel (2.4 GB for 40 MP), at 2048 px at most ~240 MB a photo (measured).
MAX_SIDE = 2048


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


@torch.inference_mode()
def segment(model: torch.nn.Module, task: Task, img: torch.Tensor, work_size: int = 512) -> torch.Tensor:
    """uint8 (3,H,W) photo -> float (C,H,W) class probabilities."""
    model.eval()
    _, h, w = img.shape
    scale = min(1.0, work_size / max(h, w))
    x = task.eval_inputs(img[None])
    if scale < 1.0:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    _, _, sh, sw = x.shape
    probs = torch.zeros(1, len(task.classes), sh, sw)
    hits = torch.zeros(1, 1, sh, sw)
    for top in _starts(sh, TILE, TILE - OVERLAP):
        for left in _starts(sw, TILE, TILE - OVERLAP):
            tile = x[..., top : top + TILE, left : left + TILE]
            probs[..., top : top + TILE, left : left + TILE] += model(tile).float().softmax(1)
            hits[..., top : top + TILE, left : left + TILE] += 1
    probs /= hits
    if (sh, sw) != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs[0]


def label_png(labels: torch.Tensor, task: Task) -> Image.Image:
    """A palette PNG whose pixel values are the class indices, shown in the task's class colours."""
    im = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
    im.putpalette([v for color in task.colors for v in hex_to_rgb(color)])
    return im


@dataclass
class Segmentation:
    labels: torch.Tensor  # (H,W) class indices
    overlay: np.ndarray  # (H,W,3) uint8: the photo and the class colours, half and half
    area: dict[str, float]  # class -> share of the photo's pixels


def segment_photo(
    model: torch.nn.Module, task: Task, img: torch.Tensor, notes: list[str], work_size: int = 512
) -> Segmentation:
    """Label map, overlay and class areas of one uint8 (3,H,W) photo; adds to `notes` how it was segmented."""
    _, h, w = img.shape
    if max(h, w) > work_size:
        notes.append(f"segmented at {work_size} px on the longer side, then resized back to {w}x{h}")
    labels = segment(model, task, img, work_size).argmax(0)
    colour = colorize(labels, [hex_to_rgb(c) for c in task.colors])
    photo = img.permute(1, 2, 0).numpy()
    overlay = (0.5 * photo + 0.5 * colour).astype(np.uint8)
    area = torch.bincount(labels.flatten(), minlength=len(task.classes)).double() / labels.numel()
    return Segmentation(labels, overlay, {c: float(a) for c, a in zip(task.classes, area, strict=True)})


def _encoded(image: Image.Image, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **options)
    return buf.getvalue()


def segment_files(
    model: torch.nn.Module, task: Task, paths: list[Path], out_dir: Path, work_size: int = 512
) -> list[dict[str, Any]]:
    """Write NAME_labels.png, NAME_overlay.jpg and NAME_areas.json for each photo into `out_dir`.

    Inputs with the same name get distinct outputs (NAME, NAME-2, ...). Every photo is read before
    any output is written, and a photo's three files are encoded in memory before the first is written.
    """
    photos = [(p, *load_photo(p, mode=task.photo_mode, min_side=MIN_SIDE, max_side=MAX_SIDE)) for p in paths]
    results = []
    for (path, img, notes), stem in zip(photos, unique_stems(paths), strict=True):
        _, h, w = img.shape
        seg = segment_photo(model, task, img, notes, work_size)
        files = {
            out_dir / f"{stem}_labels.png": _encoded(label_png(seg.labels, task), format="PNG"),
            out_dir / f"{stem}_overlay.jpg": _encoded(Image.fromarray(seg.overlay), format="JPEG", quality=90),
            out_dir / f"{stem}_areas.json": json_bytes(
                {"file": str(path), "size": [w, h], "area": seg.area, "notes": notes}
            ),
        }
        for target, data in files.items():
            atomic_write(target, partial(Path.write_bytes, data=data))
        label_file, overlay_jpg, _ = files
        results.append(
            {
                "file": str(path),
                "notes": notes,
                "area": seg.area,
                "labels": str(label_file),
                "overlay": str(overlay_jpg),
            }
        )
    return results
