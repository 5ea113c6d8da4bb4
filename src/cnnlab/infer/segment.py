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
from PIL import Image, ImageDraw, ImageFont

from ..config import RunConfig
from ..data.images import load_photo
from ..engine.runtime import Runtime, inference_runtime
from ..outputs import atomic_write, json_bytes, progress_over, unique_stems
from ..plots.overlays import colorize
from ..sizes import MAX_SIDE, MAX_WORK_SIDE, MIN_SIDE
from ..tasks import Task

TILE, OVERLAP, TILE_BATCH = 384, 64, 4
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
    im = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
    im.putpalette([v for rgb in task.rgb for v in rgb])
    return im


def with_legend(image: Image.Image, task: Task, area: dict[str, float]) -> Image.Image:
    """`image` above a white band naming each class beside its colour swatch and its share of the photo,
    in as many rows as the width needs."""
    size = max(12, round(image.width / 45))
    font = ImageFont.load_default(size=size)
    pad, swatch = size // 2, size
    entries = [(color, f"{name} {area[name]:.1%}") for name, color in zip(task.classes, task.colors, strict=True)]
    widths = [swatch + pad // 2 + round(font.getlength(text)) + 2 * pad for _, text in entries]
    rows: list[list[int]] = [[]]
    for i, w in enumerate(widths):
        if rows[-1] and sum(widths[j] for j in rows[-1]) + w > image.width - pad:
            rows.append([])
        rows[-1].append(i)
    line = size + pad
    out = Image.new("RGB", (image.width, image.height + len(rows) * line + pad), "white")
    out.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        x, y = pad, image.height + pad + r * line
        for i in row:
            color, text = entries[i]
            draw.rectangle((x, y, x + swatch, y + swatch), fill=color, outline="black")
            draw.text((x + swatch + pad // 2, y + swatch / 2), text, fill="black", font=font, anchor="lm")
            x += widths[i]
    return out


@dataclass
class Segmentation:
    labels: torch.Tensor  # (H,W) class indices
    overlay: np.ndarray  # (H,W,3) uint8: the photo under the class colours, blended by `alpha`
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
    alpha: float = 0.5,
) -> Segmentation:
    """Label map, overlay and class areas of one uint8 (3,H,W) photo; adds to `notes` how it was segmented.
    `alpha` is the class colours' weight in the overlay (0: the photo alone, 1: the colours alone)."""
    _, h, w = img.shape
    if max(h, w) > max_side:
        notes.append(f"segmented at {max_side} px on the longer side, then resized back to {w}x{h}")
    probs = segment(model, task, img, max_side, views, rt)
    labels = full_size_labels(probs, h, w)
    colour = colorize(labels, task.rgb)
    photo = img.permute(1, 2, 0).numpy()
    overlay = ((1 - alpha) * photo + alpha * colour).round().astype(np.uint8)
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
    alpha: float = 0.5,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Write NAME_labels.png, NAME_overlay.png (with a legend), NAME_side_by_side.jpg (photo | overlay) and
    NAME_areas.json for each photo into `out_dir`; `alpha` weighs the class colours in the overlay.

    Inputs with the same name get distinct outputs (NAME, NAME-2, ...). Every photo is read once before any
    output is written (and again when its turn comes: holding a folder of decoded photos would take ~12 MB
    each), and a photo's files are encoded in memory before the first is written.
    """
    for p in paths:
        load_photo(p, mode=task.photo_mode, min_side=MIN_SIDE, max_side=MAX_SIDE)
    results = []
    for path, stem in progress_over(list(zip(paths, unique_stems(paths), strict=True)), "segmenting", progress):
        img, notes = load_photo(path, mode=task.photo_mode, min_side=MIN_SIDE, max_side=MAX_SIDE)
        _, h, w = img.shape
        seg = segment_photo(model, task, img, notes, max_side, views, rt, alpha)
        overlay = with_legend(Image.fromarray(seg.overlay), task, seg.area)
        side = Image.new("RGB", (2 * w, overlay.height), "white")
        side.paste(Image.fromarray(img.expand(3, -1, -1).permute(1, 2, 0).numpy()), (0, 0))  # grey too
        side.paste(overlay, (w, 0))
        files = {
            "labels": (out_dir / f"{stem}_labels.png", _encoded(label_png(seg.labels, task), format="PNG")),
            "overlay": (out_dir / f"{stem}_overlay.png", _encoded(overlay, format="PNG")),
            "side_by_side": (out_dir / f"{stem}_side_by_side.jpg", _encoded(side, format="JPEG", quality=90)),
            "areas": (
                out_dir / f"{stem}_areas.json",
                json_bytes({"file": str(path), "size": [w, h], "area": seg.area, "notes": notes}),
            ),
        }
        for target, data in files.values():
            atomic_write(target, partial(Path.write_bytes, data=data))
        results.append(
            {"file": str(path), "notes": notes, "area": seg.area, **{k: str(t) for k, (t, _) in files.items()}}
        )
    return results
