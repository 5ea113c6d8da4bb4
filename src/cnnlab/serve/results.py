"""What the server answers an upload with: the model run on it, and its outputs as numbers and images (data: URIs)
for the page to show, blend and offer as downloads."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from ..attribution import grad_cam
from ..data.images import shrink
from ..errors import NothingFound
from ..infer.classify import classify
from ..infer.segment import label_png, segment_photo
from ..plots.overlays import heat_overlay
from ..sizes import MAX_WORK_SIDE
from .models import Served
from .schema import OVERLAY_MAX_PX, TOP, ClassifyResult, Guess, SegmentResult

CAM_MIN_PX = 224  # px: the class activation map sent back is at least this large
CONFIDENCE_CMAP = "viridis"  # yellow sure, dark blue unsure: the page's legend says so

Decode = Callable[[str, int, int], tuple[torch.Tensor, list[str]]]  # (mode, min side, max side) -> image, notes


def _data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    """`image` as a data: URI; JPEG for photos (a tenth of a PNG's bytes), PNG for anything with exact pixels."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format=fmt, quality=90)
    else:
        image.save(buf, format=fmt, compress_level=1)  # loopback or LAN: speed matters more than bytes
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _pixels(img: torch.Tensor) -> Image.Image:
    """A uint8 (C,H,W) tensor, grey or RGB, as a PIL image."""
    return Image.fromarray(img[0].numpy() if len(img) == 1 else img.permute(1, 2, 0).numpy())


def _shrunk(overlay: np.ndarray, notes: list[str]) -> Image.Image:
    image = Image.fromarray(overlay)
    if max(image.size) > OVERLAY_MAX_PX:
        image.thumbnail((OVERLAY_MAX_PX, OVERLAY_MAX_PX), Image.Resampling.LANCZOS)
        notes.append(f"overlay sent at {image.width}x{image.height}; labels_png has the size segmented")
    return image


def _confidence_overlay(small: torch.Tensor, confidence: torch.Tensor) -> np.ndarray:
    """The photo `small` (at most OVERLAY_MAX_PX: the page shows no more), half under its confidence map."""
    conf = torch.nn.functional.interpolate(confidence[None, None], size=small.shape[-2:], mode="bilinear")[0, 0]
    return heat_overlay(small, conf, alpha=0.5, cmap=CONFIDENCE_CMAP, weighted=False)


def _confidence_map(confidence: torch.Tensor) -> Image.Image:
    """The confidence alone in its colour map, at the size it was computed (the page stretches it)."""
    rgb = colormaps[CONFIDENCE_CMAP](confidence.clamp(0, 1).numpy())[..., :3]
    return Image.fromarray(np.rint(rgb * 255).astype(np.uint8))


def classified(held: Served, decode: Decode) -> ClassifyResult:
    """The top classes of an upload, decoded and prepared as the slot's task prepares any user's photo;
    no classes, and why, when it holds nothing to classify."""
    task = held.task
    img, notes = decode(task.photo_mode, *task.photo_sides)
    try:
        x, more = task.photo_input(img)
    except NothingFound as e:
        return ClassifyResult(top=[], notes=notes, nothing_found=str(e), cam_png=None, input_png=None)
    with held.lock:
        top = classify(held.model, task, x, top=TOP)
        # Gradients need a tensor made outside inference mode (the gate runs requests inside it).
        with torch.inference_mode(False):
            inputs = task.eval_inputs(x[None].clone())
            cam = grad_cam(held.model, inputs, task.classes.index(top[0][0]))[0]
    seen = Image.fromarray(heat_overlay(x, cam))
    if max(seen.size) < CAM_MIN_PX:  # a 28 px input shown with its pixels as squares, not a blur
        factor = -(-CAM_MIN_PX // max(seen.size))
        seen = seen.resize((seen.width * factor, seen.height * factor), Image.Resampling.NEAREST)
    return ClassifyResult(
        top=[Guess(class_=c, probability=p) for c, p in top],
        notes=notes + more,
        cam_png=_data_uri(seen),
        input_png=_data_uri(_pixels(x)),
    )


def segmented(held: Served, decode: Decode) -> SegmentResult:
    """The label map, overlay, photo, confidence and class areas of an upload."""
    task = held.task
    img, notes = decode(task.photo_mode, *task.photo_sides)
    seg = segment_photo(held.model, task, img, notes, MAX_WORK_SIDE, rt=held.runtime)
    small = shrink(img, OVERLAY_MAX_PX)
    return SegmentResult(
        width=img.shape[2],
        height=img.shape[1],
        areas=seg.area,
        colors=dict(zip(task.classes, task.colors, strict=True)),
        overlay_png=_data_uri(_shrunk(seg.overlay, notes)),
        confidence_png=_data_uri(Image.fromarray(_confidence_overlay(small, seg.confidence))),
        labels_png=_data_uri(label_png(seg.labels, task)),
        photo_jpeg=_data_uri(_pixels(small), "JPEG"),
        confidence_map_png=_data_uri(_confidence_map(seg.confidence)),
        notes=notes,
    )
