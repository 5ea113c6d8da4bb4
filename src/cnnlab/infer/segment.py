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
import json
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .. import attribution
from ..config import RunConfig
from ..data.images import label_maps_beside_photos, shrink
from ..engine.runtime import Runtime, inference_runtime
from ..engine.tta import Views, average
from ..errors import CnnlabWarning, ConfigError
from ..metrics import class_areas
from ..outputs import atomic_write, check_dir, json_bytes, progress_over
from ..plots.overlays import colorize
from ..sizes import MAX_EXPLAIN_SIDE, MAX_WORK_SIDE, MIN_WORK_SIDE
from ..tasks import Task
from . import photos

if TYPE_CHECKING:
    from .predict import Options

# The working sizes `explain` takes: gradients through a U-Net need ~10x the memory of a prediction.
EXPLAIN_SIDES = (MIN_WORK_SIDE, MAX_EXPLAIN_SIDE)

TILE, OVERLAP, TILE_BATCH = 384, 64, 4
_ROWS = 256  # rows of the full-size output resized and labelled at a time


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


def _tiled(model: torch.nn.Module, task: Task, x: torch.Tensor, rt: Runtime, flip: bool) -> torch.Tensor:
    """(1, C_in, H, W) normalised -> (1, classes, H, W) blended tile probabilities."""
    _, _, h, w = x.shape
    th, tw = min(TILE, h), min(TILE, w)
    boxes = [(t, le) for t in _starts(h, th, TILE - OVERLAP) for le in _starts(w, tw, TILE - OVERLAP)]
    weight = (_ramp(th)[:, None] * _ramp(tw)[None, :]) if len(boxes) > 1 else torch.ones(th, tw)

    def probs(batch: torch.Tensor) -> torch.Tensor:
        with rt.autocast():
            return model(batch).float().softmax(1)

    out, total = None, torch.zeros(h, w)
    for i in range(0, len(boxes), TILE_BATCH):
        part = boxes[i : i + TILE_BATCH]
        batch = torch.cat([x[..., t : t + th, le : le + tw] for t, le in part])
        if rt.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        # Each tile mirrored whole: a mirrored photo would be cut into other tiles.
        p = average(probs, batch, Views(flip=flip), task.unflip)
        if out is None:
            out = torch.zeros(p.shape[1], h, w)
        for (t, le), q in zip(part, p, strict=True):
            out[:, t : t + th, le : le + tw] += q * weight
            total[t : t + th, le : le + tw] += weight
    return (out / total)[None]


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
    most `max_side`), averaged over `views` (mirrored, resized; a segmenter takes no shifted views);
    `rt` None: bf16 where the CPU has it, channels-last."""
    model.eval()
    rt = rt or inference_runtime()
    _, h, w = img.shape
    scale = min(1.0, max_side / max(h, w))
    x = task.eval_inputs(img[None])
    if scale < 1.0:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    whole = Views(scales=views.scales)
    return average(lambda xs: _tiled(model, task, xs, rt, views.flip), x, whole, task.unflip)[0]


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
    return Segmentation(labels, overlay, class_areas(labels, task.classes), probs.amax(0))


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

    Inputs with the same name get distinct outputs (NAME, NAME-2, ...). Every photo is read before any
    output is written (`infer.photos`), and a photo's files are encoded in memory before the first is written.
    """
    results = []
    for path, stem, img, notes in progress_over(photos(task, paths), "segmenting", progress, len(paths)):
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


def predict_files(
    run_dir: Path, model: torch.nn.Module, cfg: RunConfig, task: Task, paths: list[Path], opts: Options
) -> list[dict[str, Any]]:
    """The outputs of `segment_files` for each photo, in `opts.out` (default RUN/predictions, or
    ./predictions for a shipped model, which lives inside the installed package)."""
    from ..zoo import is_shipped

    if opts.save_inputs is not None:
        raise ConfigError(f"save_inputs {opts.save_inputs}: {cfg.task} models see the photo itself; drop it")
    if labels := label_maps_beside_photos(paths):
        # A folder of NAME.jpg + NAME.png (photos and their masks): the masks are answers, not photos.
        paths = [p for p in paths if p not in set(labels)]
        warnings.warn(
            f"skipped {len(labels)} label map(s) beside their photos ({labels[0].name} next to {labels[0].stem}.jpg)",
            CnnlabWarning,
            stacklevel=2,
        )
    default = Path("predictions") if is_shipped(run_dir) else run_dir / "predictions"
    folder = check_dir(opts.out or default, "--out")
    views = Views.of(cfg) if opts.tta else Views()
    max_side = opts.max_side or MAX_WORK_SIDE
    return segment_files(model, task, paths, folder, max_side, views, None, opts.alpha, opts.progress)


def explain_photo(
    model: torch.nn.Module,
    task: Task,
    img: torch.Tensor,
    notes: list[str],
    target: int | None,
    out: Path,
    stem: str,
    max_side: int = MAX_WORK_SIDE,
) -> dict[str, Any]:
    """OUT/STEM_explain.png (prediction, confidence, entropy) and OUT/STEM_cams.png (Grad-CAM of `target`,
    default every class) of one photo at `max_side` px; returns the numbers."""
    from ..plots.explain import plot_class_cams, plot_confidence_cases

    _, h, w = img.shape
    img = shrink(img, max_side)
    if img.shape[1:] != (h, w):
        notes.append(f"explained at {img.shape[2]}x{img.shape[1]} px (max side {max_side})")
    x = task.eval_inputs(img[None])
    with torch.no_grad():
        probs = model(x).softmax(1)
    conf, ent = attribution.confidence_maps(probs)
    pred = probs.argmax(1)
    figure = plot_confidence_cases(
        img[None], None, pred, conf, ent, [stem], None, task.classes, task.rgb, out / f"{stem}_explain",
        f"{stem}: prediction, confidence and entropy", attribution.max_entropy(len(task.classes)),
    )  # fmt: skip
    chosen = [target] if target is not None else range(len(task.classes))
    layer = attribution.cam_layer(model, x, per_pixel=True)[1]
    cams = {task.classes[c]: attribution.grad_cam(model, x, c, per_pixel=True, layer=layer)[0] for c in chosen}
    cam_png = plot_class_cams(
        img, cams, pred[0], task.rgb, task.classes, out / f"{stem}_cams",
        f"{stem}: Grad-CAM of {'each class' if target is None else task.classes[target]}",
    )  # fmt: skip
    return {
        **json.loads(figure.with_suffix(".json").read_text()),
        "figure": str(figure),
        "cams": str(cam_png),
        "size": [int(img.shape[2]), int(img.shape[1])],
        "mean_confidence": float(conf.mean()),
        "unsure_share": float((conf < 0.5).double().mean()),
        "mean_entropy": float(ent.mean()),
        "area": class_areas(pred, task.classes),
        "cam_peak": {c: attribution.peak(m) for c, m in cams.items()},
    }
