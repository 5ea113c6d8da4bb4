"""Segment the user's own photos: any size, tiled inference, label map + overlay + areas.

Scale matters more than size: the nets learned from 256x256 images each showing about one facade, so a
photo is first resized so its longer side is `max_side` (smaller photos are left as they are), then
covered by overlapping tiles run a few at a time. Where tiles overlap, their class probabilities are
blended with weights that fall off towards each tile's edge (no seams where one tile's border context
ends). The probabilities are brought back to the photo's size a band of rows at a time, so the full-size
float maps never exist at once: memory is bounded by the working size, not the photo's.
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
from .config import RunConfig
from .data.images import load_photo
from .outputs import json_bytes, unique_stems
from .runtime import Runtime, inference_runtime
from .tasks import Task

TILE, OVERLAP, TILE_BATCH = 384, 64, 4
# px, the longer side segmentation works at by default. The nets learned from 256 px images of one facade
# each; validation facades enlarged as a photo would show them lose most at any other working size
# (mAP 0.725 at 256, 0.62 at 384, 0.52 at 512: benchmarks/segment_photo.py, BENCHMARKS.md).
MAX_WORK_SIDE = 256
MIN_WORK_SIDE = 64  # px: the smallest --max-side; below it a facade's windows are a pixel or two
MIN_SIDE = 32  # px: smaller than a window of the training crops
# px: photos are decoded at most this large. Segmentation runs at `max_side` anyway; the outputs at full
# size cost ~100 bytes a pixel (2.4 GB for 40 MP), at 2048 px at most ~240 MB a photo (measured).
MAX_SIDE = 2048
_ROWS = 256  # rows of the full-size output resized and labelled at a time


@dataclass(frozen=True)
class Views:
    """Test-time views averaged per tile: mirrored, and the working image resized by each factor."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)


def recipe_views(cfg: RunConfig, tta: bool) -> Views:
    """The test-time views the run's recipe evaluates with (`tta`), or the plain view."""
    return Views(cfg.train.tta_flip, tuple(cfg.train.tta_scales)) if tta else Views()


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _ramp(length: int) -> torch.Tensor:
    # 1 inside, falling linearly over the outer OVERLAP px to near 0 (never 0: a pixel covered by one
    # tile only still gets its prediction).
    i = torch.arange(length, dtype=torch.float32)
    return ((torch.minimum(i + 0.5, length - i - 0.5)) / OVERLAP).clamp(max=1.0)


def _tiled(model: torch.nn.Module, x: torch.Tensor, rt: Runtime, flip: bool) -> torch.Tensor:
    """(1, C_in, H, W) normalised -> (1, classes, H, W) blended tile probabilities."""
    _, _, h, w = x.shape
    th, tw = min(TILE, h), min(TILE, w)
    boxes = [(t, le) for t in _starts(h, th, TILE - OVERLAP) for le in _starts(w, tw, TILE - OVERLAP)]
    weight = (_ramp(th)[:, None] * _ramp(tw)[None, :]) if len(boxes) > 1 else torch.ones(th, tw)
    probs, total = None, torch.zeros(h, w)
    for i in range(0, len(boxes), TILE_BATCH):
        part = boxes[i : i + TILE_BATCH]
        batch = torch.cat([x[..., t : t + th, le : le + tw] for t, le in part])
        if rt.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            p = model(batch).float().softmax(1)
            if flip:
                p = (p + model(batch.flip(-1)).float().softmax(1).flip(-1)) / 2
        if probs is None:
            probs = torch.zeros(p.shape[1], h, w)
        for (t, le), q in zip(part, p, strict=True):
            probs[:, t : t + th, le : le + tw] += q * weight
            total[t : t + th, le : le + tw] += weight
    return (probs / total)[None]


@torch.inference_mode()
def segment(
    model: torch.nn.Module,
    task: Task,
    img: torch.Tensor,
    max_side: int = MAX_WORK_SIDE,
    views: Views = Views(),
    rt: Runtime | None = None,
) -> torch.Tensor:
    """uint8 (C,H,W) photo -> float (classes, h, w) probabilities at the working size (longer side at
    most `max_side`), averaged over `views`; `rt` None: bf16 where the CPU has it, channels-last."""
    model.eval()
    rt = rt or inference_runtime()
    _, h, w = img.shape
    scale = min(1.0, max_side / max(h, w))
    x = task.eval_inputs(img[None])
    if scale < 1.0:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    size = x.shape[-2:]
    out = 0
    for s in views.scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        p = _tiled(model, xs, rt, views.flip)
        out = out + (p if s == 1 else F.interpolate(p, size=size, mode="bilinear", align_corners=False))
    return (out / len(views.scales))[0]


def full_size_labels(probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(classes, h, w) probabilities -> uint8 (height, width) labels of the probabilities resized
    bilinearly (as F.interpolate, align_corners=False), computed a band of rows at a time."""
    h = probs.shape[1]
    out = torch.empty(height, width, dtype=torch.uint8)
    for top in range(0, height, _ROWS):
        rows = torch.arange(top, min(height, top + _ROWS), dtype=torch.float64)
        y = ((rows + 0.5) * (h / height) - 0.5).clamp(0, h - 1)
        y0 = y.floor().long()
        y1, wy = (y0 + 1).clamp(max=h - 1), (y - y0).float().view(1, -1, 1)
        band = probs[:, y0] * (1 - wy) + probs[:, y1] * wy  # the vertical half of the bilinear resize
        band = F.interpolate(band[None], size=(len(rows), width), mode="bilinear", align_corners=False)
        out[top : top + len(rows)] = band[0].argmax(0).to(torch.uint8)
    return out


def label_png(labels: torch.Tensor, task: Task) -> Image.Image:
    """A palette PNG whose pixel values are the class indices, shown in the task's class colours."""
    from .tasks.segment import hex_to_rgb

    im = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
    im.putpalette([v for color in task.colors for v in hex_to_rgb(color)])
    return im


@dataclass
class Segmentation:
    labels: torch.Tensor  # (H,W) class indices
    overlay: np.ndarray  # (H,W,3) uint8: the photo and the class colours, half and half
    area: dict[str, float]  # class -> share of the photo's pixels
    confidence: torch.Tensor  # (h,w) the top class's probability, at the working size


def segment_photo(
    model: torch.nn.Module,
    task: Task,
    img: torch.Tensor,
    notes: list[str],
    max_side: int = MAX_WORK_SIDE,
    views: Views = Views(),
    rt: Runtime | None = None,
) -> Segmentation:
    """Label map, overlay and class areas of one uint8 (3,H,W) photo; adds to `notes` how it was segmented."""
    # Imported here: the CLI reads this module's sizes for its --help, without loading matplotlib.
    from .report.figures import colorize
    from .tasks.segment import hex_to_rgb

    _, h, w = img.shape
    if max(h, w) > max_side:
        notes.append(f"segmented at {max_side} px on the longer side, then resized back to {w}x{h}")
    probs = segment(model, task, img, max_side, views, rt)
    labels = full_size_labels(probs, h, w)
    colour = colorize(labels, [hex_to_rgb(c) for c in task.colors])
    photo = img.permute(1, 2, 0).numpy()
    overlay = (0.5 * photo + 0.5 * colour).astype(np.uint8)
    area = torch.bincount(labels.flatten(), minlength=len(task.classes)).double() / labels.numel()
    areas = {c: float(a) for c, a in zip(task.classes, area, strict=True)}
    return Segmentation(labels, overlay, areas, probs.amax(0))


def _encoded(image: Image.Image, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **options)
    return buf.getvalue()


def segment_files(
    model: torch.nn.Module,
    task: Task,
    paths: list[Path],
    out_dir: Path,
    max_side: int = MAX_WORK_SIDE,
    views: Views = Views(),
    rt: Runtime | None = None,
) -> list[dict[str, Any]]:
    """Write NAME_labels.png, NAME_overlay.jpg and NAME_areas.json for each photo into `out_dir`.

    Inputs with the same name get distinct outputs (NAME, NAME-2, ...). Every photo is read before
    any output is written, and a photo's three files are encoded in memory before the first is written.
    """
    photos = [(p, *load_photo(p, mode=task.photo_mode, min_side=MIN_SIDE, max_side=MAX_SIDE)) for p in paths]
    results = []
    for (path, img, notes), stem in zip(photos, unique_stems(paths), strict=True):
        _, h, w = img.shape
        seg = segment_photo(model, task, img, notes, max_side, views, rt)
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
