"""Issue 17: the shipped Fashion-MNIST classifier on photos of its test garments as people take them.

    python benchmarks/robustness.py                  # 1,000 test images per condition, into BENCHMARKS.md
    python benchmarks/robustness.py --split val      # the held-out training images: tune on these, not on test

Each Fashion-MNIST image is rendered as a photo: the dataset negated its product photos, so the garment
goes back dark on a light background (light on dark for the "dark background" and "original"
conditions), composited with a soft alpha taken from its intensity onto a background of the condition's
kind, at 112-280 px a side with mild sensor noise, then blurred or JPEG-compressed where the condition
says; one condition is the 28x28 image itself, as if uploaded. Everything is seeded by (seed, condition,
image), so a run repeats exactly.

Each photo is classified by the shipped `fashion` model (`predict`'s path: one view, no test-time
flips) after three preparations: "before", the preparation cnnlab shipped until issue 17 (copied below,
unchanged); "now", `FashionTask.photo_input`; and "background known", `photo_input` given the garment
with its background removed exactly (the renderer knows where it put the garment and what was behind
it): what that scores is lost to the photo's damage (blur, JPEG) and the model, not to finding the garment.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F
from common import machine, write_block
from PIL import Image
from scipy import ndimage

from cnnlab.data import fashion
from cnnlab.data.images import shrink
from cnnlab.engine.checkpoint import load_model
from cnnlab.tasks import Task, get_task
from cnnlab.zoo import resolve_model

SEED = 17
MAX_SIDE = 280


@dataclass(frozen=True)
class Condition:
    """How a photo is taken: the background, how much of the frame the garment fills, where, and damage."""

    name: str
    # "white", "grey", "texture" (paper or wood), "dark" (light garment), "black" (the original enlarged)
    # or "none" (the 28x28 image itself, as if uploaded)
    background: str
    scale: tuple[float, float] = (0.55, 0.8)  # garment square's side / the frame's shorter side; 1: no margin
    off_centre: bool = False
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian sigma as a share of the garment's side
    jpeg: int | None = None  # JPEG quality
    uneven: float = 0.0  # light falling off across the frame, up to this share


CONDITIONS = (
    Condition("the 28x28 test image itself", "none", scale=(1, 1)),
    Condition("original: light on black, no margin", "black", scale=(1, 1)),
    Condition("tight crop: dark on white, no margin", "white", scale=(1, 1)),
    Condition("white margin", "white"),
    Condition("light-grey background", "grey"),
    Condition("textured background (paper, wood)", "texture"),
    Condition("dark background, light garment", "dark"),
    Condition("small in a large frame", "white", scale=(0.25, 0.4)),
    Condition("off-centre", "grey", scale=(0.4, 0.6), off_centre=True),
    Condition("blurred", "white", blur=(0.015, 0.03)),
    Condition("JPEG quality 30", "grey", jpeg=30),
    Condition("uneven light", "grey", uneven=0.15),
    Condition("grey, small, off-centre, blurred, JPEG 30", "grey", (0.3, 0.5), True, (0.01, 0.02), 30, 0.1),
    Condition("textured, small, JPEG 30", "texture", scale=(0.3, 0.5), jpeg=30),
)


@dataclass(frozen=True)
class Photo:
    """A rendered photo and what the renderer knows: where the garment's square is and what was behind it."""

    pixels: np.ndarray  # uint8 (H, W)
    box: tuple[int, int, int]  # top, left, side of the garment's square
    behind: np.ndarray  # float (H, W): the background (with light fall-off) before the garment went on
    tone: float  # the garment's own grey


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "white":
        return np.full((h, w), rng.uniform(235, 255))
    if kind == "grey":
        return np.full((h, w), rng.uniform(170, 215))
    if kind == "dark":
        return np.full((h, w), rng.uniform(5, 60))
    if kind == "black":
        return np.zeros((h, w))
    base = rng.uniform(175, 230)
    blotches = ndimage.gaussian_filter(rng.normal(size=(h, w)), max(h, w) / 10)
    blotches *= rng.uniform(6, 12) / max(blotches.std(), 1e-9)
    if rng.random() < 0.5:  # paper: fibres and blotches
        fibres = ndimage.gaussian_filter(rng.normal(size=(h, w)), 1.2)
        return base + blotches + fibres * rng.uniform(4, 8) / fibres.std()
    yy, xx = np.mgrid[:h, :w]  # wood: grain stripes that wander
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
    wander = ndimage.gaussian_filter(rng.normal(size=(h, w)), max(h, w) / 8)
    wander *= 3 / max(wander.std(), 1e-9)
    phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + wander
    return base + blotches + rng.uniform(6, 14) * np.sin(phase)


def render(garment: np.ndarray, cond: Condition, rng: np.random.Generator) -> Photo:
    """One 28x28 Fashion-MNIST image (light on black) as a photo under `cond`."""
    if cond.background == "none":
        return Photo(garment.copy(), (0, 0, 28), np.zeros((28, 28)), 255.0)
    side = int(rng.integers(112, MAX_SIDE + 1))
    short = side if cond.scale == (1, 1) else round(side * rng.uniform(0.75, 1.0))
    h, w = (side, short) if rng.random() < 0.5 else (short, side)
    size = max(8, round(min(h, w) * rng.uniform(*cond.scale)))
    if cond.off_centre:
        top, left = (int(rng.integers(0, free + 1)) if free else 0 for free in (h - size, w - size))
        while (h - size) and abs(top - (h - size) / 2) < (h - size) / 4 and abs(left - (w - size) / 2) < (w - size) / 4:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    else:
        top = round((h - size) / 2 + rng.uniform(-0.05, 0.05) * (h - size))
        left = round((w - size) / 2 + rng.uniform(-0.05, 0.05) * (w - size))
    behind = _background(cond.background, h, w, rng)
    if cond.uneven:
        yy, xx = np.mgrid[:h, :w]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)
        behind = behind * (1 - cond.uneven * (ramp + 0.5))
    light = cond.background in ("dark", "black")
    tone = 255.0 if cond.background == "black" else rng.uniform(200, 250) if light else rng.uniform(0, 50)
    big = Image.fromarray(garment.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR)
    alpha = np.zeros((h, w))
    alpha[top : top + size, left : left + size] = np.clip(np.asarray(big) / 255, 0, 1)
    photo = alpha * tone + (1 - alpha) * behind
    if cond.blur[1]:
        photo = ndimage.gaussian_filter(photo, rng.uniform(*cond.blur) * size)
    if cond.background != "black":
        photo = photo + rng.normal(0, rng.uniform(1.5, 4), photo.shape)
    pixels = photo.round().clip(0, 255).astype(np.uint8)
    if cond.jpeg:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=cond.jpeg)
        pixels = np.array(Image.open(buf))
    return Photo(pixels, (top, left, size), behind, tone)


def before_pixels(img: torch.Tensor) -> torch.Tensor:
    """The "before" path: cnnlab's photo preparation until issue 17 (`fashion_pixels`), unchanged but for its notes."""
    _, h, w = img.shape
    border = torch.cat([img[0, 0], img[0, -1], img[0, :, 0], img[0, :, -1]]).float()
    background = float(border.median())
    if max(h, w) > MAX_SIDE:
        img = shrink(img, MAX_SIDE)
        _, h, w = img.shape
    if h != w:
        side = max(h, w)
        canvas = torch.full((1, side, side), background, dtype=torch.float32)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, top : top + h, left : left + w] = img.float()
    else:
        canvas = img.float()
    if (h, w) != (28, 28):
        canvas = F.interpolate(canvas[None], size=(28, 28), mode="area")[0]
    if background > 127:
        canvas = 255 - canvas
    return canvas.round().clamp(0, 255).to(torch.uint8)


def background_removed(photo: Photo) -> torch.Tensor:
    """The photo's garment alone, light on black: its alpha, undone with the known background and tone
    inside the known square, so only the photo's damage (noise, blur, JPEG) is left in it."""
    top, left, size = photo.box
    region = np.s_[top : top + size, left : left + size]
    alpha = np.zeros(photo.pixels.shape)
    alpha[region] = (photo.pixels[region] - photo.behind[region]) / (photo.tone - photo.behind[region])
    return torch.from_numpy((np.clip(alpha, 0, 1) * 255).round().astype(np.uint8))[None]


def images(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of a split, a seeded draw (the same draw in every run)."""
    data = fashion.load(val_fraction=0.1, seed=0)[split]
    pick = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(SEED))[:n]
    return data.x[pick], data.y[pick]


def measure(model: torch.nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, cond: Condition, index: int) -> dict:
    """Accuracy of each preparation on `cond`'s photos of `x`, and the preparations' time per image."""
    prepared: dict[str, list[torch.Tensor]] = {"before": [], "now": [], "known": []}
    seconds = {"before": 0.0, "now": 0.0}
    for i, garment in enumerate(x[:, 0].numpy()):
        photo = render(garment, cond, np.random.default_rng([SEED, index, i]))
        img = torch.from_numpy(photo.pixels)[None]
        for name, prepare in (("before", before_pixels), ("now", lambda t: task.photo_input(t)[0])):
            start = time.perf_counter()
            prepared[name].append(prepare(img))
            seconds[name] += time.perf_counter() - start
        prepared["known"].append(task.photo_input(background_removed(photo))[0])
    row = {f"{k}_ms": 1000 * s / len(y) for k, s in seconds.items()}
    with torch.no_grad():
        for name, batch in prepared.items():
            row[name] = float((model(task.eval_inputs(torch.stack(batch))).argmax(1) == y).float().mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images per condition")
    parser.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="val: the training images held out from the shipped model, to tune on; only test writes BENCHMARKS.md",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-image preparation is timed as a server worker runs it
    model, cfg = load_model(resolve_model(None, "fashion"))
    model.eval()
    task = get_task(cfg)
    x, y = images(args.split, args.n)
    cpu = machine().split(",")[0]
    rows = []
    for index, cond in enumerate(CONDITIONS):
        r = measure(model, task, x, y, cond, index)
        rows.append(r)
        print(
            f"{cond.name:45s} before {r['before']:.1%}  now {r['now']:.1%}  background known {r['known']:.1%}  "
            f"({r['before_ms']:.2f} / {r['now_ms']:.2f} ms)",
            flush=True,
        )
    if args.split != "test":
        return
    lines = [
        f"Measured {date.today()} on {machine()}; `python benchmarks/robustness.py` (the shipped `fashion` model, "
        f"{args.n:,} test images per condition, the same images in every condition, one view as `predict` sees it).",
        "",
        "| condition | images | before | now | background known | ms per image before / now | CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for cond, r in zip(CONDITIONS, rows, strict=True):
        lines.append(
            f"| {cond.name} | {args.n:,} | {r['before']:.1%} | {r['now']:.1%} | {r['known']:.1%} "
            f"| {r['before_ms']:.2f} / {r['now_ms']:.2f} | {cpu} |"
        )
    write_block("robustness", "\n".join(lines))


if __name__ == "__main__":
    main()
