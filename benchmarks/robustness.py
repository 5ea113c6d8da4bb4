"""Issues 17 and 29: the shipped Fashion-MNIST classifier on photos of its test garments as people take them.

    python benchmarks/robustness.py                  # 1,000 test images per condition, into BENCHMARKS.md
    python benchmarks/robustness.py --split val      # the held-out training images: tune on these, not on test
    python benchmarks/robustness.py --issue-photos   # issue 29's ten photos (colour, rotated, 3000x4000 JPEG)

Each Fashion-MNIST image is rendered as a photo: the dataset negated its product photos, so the garment
goes back dark on a light background (light on dark for the "dark background" and "original"
conditions), composited with a soft alpha taken from its intensity onto a background of the condition's
kind, at 112-280 px a side with mild sensor noise, then blurred or JPEG-compressed where the condition
says; one condition is the 28x28 image itself, as if uploaded. The colour conditions (issue 29) give
the garment a colour (a hue, sometimes with the background's own grey, so that only its colour tells it
apart) over a plain colour or a tinted texture. Everything is seeded by (seed, condition, image), so a
run repeats exactly.

Each photo is classified by the shipped `fashion` model (`predict`'s path: one view, no test-time
flips) after four preparations: "before", the preparation cnnlab shipped until issue 17 (copied below,
unchanged), on the photo in grey; "grey only", `FashionTask.photo_input` on the photo in grey, which is
how cnnlab prepared every photo until issue 29 (it decoded them grey); "now", `photo_input` on the photo
as decoded (colour); and "background known", `photo_input` given the garment with its background removed
exactly (the renderer knows where it put the garment and what was behind it): what that scores is lost to
the photo's damage (blur, JPEG) and the model, not to finding the garment. A photo in which a
preparation finds no garment counts as wrong (cnnlab says so instead of guessing).
"""

from __future__ import annotations

import argparse
import colorsys
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
from cnnlab.errors import NothingFound
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
    # "grey" (a grey tone), "colour" (a hue of any brightness) or "colour, background's grey" (a hue with
    # the background's grey level, +-8: told apart by its colour alone)
    garment: str = "grey"


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
    Condition("colour garment, white or grey background", "grey", garment="colour"),
    Condition("colour garment, the background's grey", "grey", garment="colour, background's grey"),
    Condition("colour garment on a colour background", "colour", garment="colour"),
    Condition("colour garment on beige texture (paper, wood)", "beige texture", garment="colour"),
    Condition("colour, the background's grey, on beige texture", "beige texture", garment="colour, background's grey"),
    Condition("colour on colour, small, off-centre, JPEG 30", "colour", (0.3, 0.5), True, jpeg=30, garment="colour"),
)
GREY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL converts RGB to grey
BEIGE = np.array([1.0, 0.92, 0.76]) / (np.array([1.0, 0.92, 0.76]) @ GREY)  # a tint of grey level 1


@dataclass(frozen=True)
class Photo:
    """A rendered photo and what the renderer knows: where the garment's square is and what was behind it."""

    pixels: np.ndarray  # uint8 (H, W), or (H, W, 3) in colour
    box: tuple[int, int, int]  # top, left, side of the garment's square
    behind: np.ndarray  # float (H, W) or (H, W, 3): the background (with light fall-off) before the garment went on
    tone: np.ndarray  # the garment's own grey (1,) or colour (3,)

    def tensor(self) -> torch.Tensor:
        """The photo as cnnlab decodes it: uint8 (1, H, W) grey or (3, H, W) colour."""
        return torch.from_numpy(np.ascontiguousarray(np.atleast_3d(self.pixels).transpose(2, 0, 1)))

    def grey(self) -> torch.Tensor:
        """The photo decoded in grey, as cnnlab decoded every photo until issue 29."""
        if self.pixels.ndim == 2:
            return self.tensor()
        return torch.from_numpy(np.asarray(Image.fromarray(self.pixels).convert("L")).copy())[None]


def _hue(
    rng: np.random.Generator, saturation: tuple[float, float], value: float, avoid: float | None = None
) -> np.ndarray:
    """An RGB colour (0..255) of a random hue at least 0.15 of the hue circle from `avoid`."""
    hue = rng.uniform(0, 1)
    while avoid is not None and min(abs(hue - avoid), 1 - abs(hue - avoid)) < 0.15:
        hue = rng.uniform(0, 1)
    return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), value))


def _coloured(kind: str, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """A colour background (H, W, 3) and its hue (None for a grey one)."""
    if kind == "beige texture":
        return _background("texture", h, w, rng)[..., None] * BEIGE, 0.11
    if kind == "colour":
        hue = rng.uniform(0, 1)
        rgb = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.8), rng.uniform(0.45, 0.95)))
        return np.broadcast_to(rgb, (h, w, 3)).copy(), hue
    return np.repeat(_background(kind, h, w, rng)[..., None], 3, axis=2), None


def _garment_colour(cond: Condition, behind: np.ndarray, hue: float | None, rng: np.random.Generator) -> np.ndarray:
    """The garment's RGB colour: any brightness, or the background's grey +-8 (its colour tells it apart)."""
    colour = _hue(rng, (0.5, 1.0), rng.uniform(0.15, 1.0), hue)
    if cond.garment == "colour":
        return colour
    target = float(behind.reshape(-1, 3).mean(0) @ GREY) + rng.uniform(-8, 8)
    for _ in range(3):  # scaled towards the target grey; clipping at 255 may need another pass
        colour = np.clip(colour * target / max(float(colour @ GREY), 1.0), 0, 255)
    return colour


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
        return Photo(garment.copy(), (0, 0, 28), np.zeros((28, 28)), np.array([255.0]))
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
    if cond.garment == "grey":
        behind = _background(cond.background, h, w, rng)
    else:
        behind, hue = _coloured(cond.background, h, w, rng)
    if cond.uneven:
        yy, xx = np.mgrid[:h, :w]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)
        behind = behind * (1 - cond.uneven * (ramp + 0.5))
    light = cond.background in ("dark", "black")
    if cond.garment != "grey":
        tone = _garment_colour(cond, behind, hue, rng)
    else:
        tone = np.array(
            [255.0 if cond.background == "black" else rng.uniform(200, 250) if light else rng.uniform(0, 50)]
        )
    big = Image.fromarray(garment.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR)
    alpha = np.zeros((h, w))
    alpha[top : top + size, left : left + size] = np.clip(np.asarray(big) / 255, 0, 1)
    if behind.ndim == 3:
        alpha = alpha[..., None]
    photo = alpha * (tone if behind.ndim == 3 else tone[0]) + (1 - alpha) * behind
    if cond.blur[1]:
        sigma = rng.uniform(*cond.blur) * size
        photo = ndimage.gaussian_filter(photo, (sigma, sigma, 0)[: photo.ndim])
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
    pixels, behind = np.atleast_3d(photo.pixels)[region], np.atleast_3d(photo.behind)[region]
    towards = photo.tone - behind  # alpha is the photo's share of the way from the background to the tone
    alpha = np.zeros(photo.pixels.shape[:2])
    alpha[region] = ((pixels - behind) * towards).sum(2) / np.maximum((towards**2).sum(2), 1e-9)
    return torch.from_numpy((np.clip(alpha, 0, 1) * 255).round().astype(np.uint8))[None]


def images(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of a split, a seeded draw (the same draw in every run)."""
    data = fashion.load(val_fraction=0.1, seed=0)[split]
    pick = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(SEED))[:n]
    return data.x[pick], data.y[pick]


def measure(model: torch.nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, cond: Condition, index: int) -> dict:
    """Accuracy of each preparation on `cond`'s photos of `x`, and the preparations' time per image."""
    prepared: dict[str, list[torch.Tensor | None]] = {"before": [], "grey": [], "now": [], "known": []}
    seconds = {"before": 0.0, "now": 0.0}

    def found(img: torch.Tensor) -> torch.Tensor | None:
        try:
            return task.photo_input(img)[0]
        except NothingFound:
            return None

    for i, garment in enumerate(x[:, 0].numpy()):
        photo = render(garment, cond, np.random.default_rng([SEED, index, i]))
        for name, prepare, img in (("before", before_pixels, photo.grey()), ("now", found, photo.tensor())):
            start = time.perf_counter()
            prepared[name].append(prepare(img))
            seconds[name] += time.perf_counter() - start
        prepared["grey"].append(found(photo.grey()) if photo.pixels.ndim == 3 else prepared["now"][-1])
        prepared["known"].append(found(background_removed(photo)))
    row = {f"{k}_ms": 1000 * s / len(y) for k, s in seconds.items()}
    with torch.no_grad():
        for name, batch in prepared.items():
            seen = [i for i, b in enumerate(batch) if b is not None]
            row[f"{name}_none"] = len(batch) - len(seen)
            pred = model(task.eval_inputs(torch.stack([batch[i] for i in seen]))).argmax(1) if seen else y[:0]
            row[name] = float((pred == y[seen]).sum()) / len(y)
    return row


def issue_photos(model: torch.nn.Module, task: Task, n: int = 10) -> None:
    """Issue 29's photos: test garments tinted red or blue, rotated 23 degrees, on beige paper or wood, as
    3000x4000 JPEGs (quality 85), read as `predict` reads them; prints what grey-only and now make of them."""
    import tempfile

    from cnnlab.data.images import load_photo
    from cnnlab.infer.classify import classify

    x, y = images("test", n)
    rng = np.random.default_rng(29)
    said = {"grey only": [0, 0], "now": [0, 0]}
    with tempfile.TemporaryDirectory() as tmp:
        for i, garment in enumerate(x[:, 0].numpy()):
            photo = _background("texture", 400, 300, rng)[..., None] * BEIGE
            tint = np.array([200, 60, 50] if i % 2 == 0 else [60, 80, 200]) * rng.uniform(0.9, 1.2)
            turned = Image.fromarray(garment).rotate(23, Image.Resampling.BILINEAR, expand=True)
            alpha = np.asarray(turned.resize((220, 220), Image.Resampling.BILINEAR), float)[..., None] / 255
            photo[90:310, 40:260] = alpha * tint + (1 - alpha) * photo[90:310, 40:260]
            path = f"{tmp}/photo{i}.jpg"
            big = Image.fromarray(photo.clip(0, 255).astype(np.uint8)).resize((3000, 4000), Image.Resampling.BICUBIC)
            big.save(path, quality=85)
            for name, mode in (("grey only", "L"), ("now", task.photo_mode)):
                img, _ = load_photo(path, mode=mode, min_side=task.photo_sides[0], max_side=task.photo_sides[1])
                try:
                    top = classify(model, task, task.photo_input(img)[0])
                except NothingFound as e:
                    said[name][0] += 1
                    print(f"{i} {task.classes[int(y[i])]:12s} {name:9s} {e}")
                    continue
                said[name][1] += top[0][0] == task.classes[int(y[i])]
                print(f"{i} {task.classes[int(y[i])]:12s} {name:9s} " + ", ".join(f"{c} {p:.0%}" for c, p in top))
    for name, (none, right) in said.items():
        print(f"{name}: {none} of {n} no garment found, {right} of {n} right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images per condition")
    parser.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="val: the training images held out from the shipped model, to tune on; only test writes BENCHMARKS.md",
    )
    parser.add_argument("--only", metavar="TEXT", help="run only the conditions whose name holds TEXT (no table)")
    parser.add_argument("--issue-photos", action="store_true", help="issue 29's ten photos instead (no table)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-image preparation is timed as a server worker runs it
    model, cfg = load_model(resolve_model(None, "fashion"))
    model.eval()
    task = get_task(cfg)
    if args.issue_photos:
        return issue_photos(model, task)
    x, y = images(args.split, args.n)
    cpu = machine().split(",")[0]
    rows = []
    for index, cond in enumerate(CONDITIONS):
        if args.only and args.only not in cond.name:
            continue
        r = measure(model, task, x, y, cond, index)
        rows.append(r)
        print(
            f"{cond.name:50s} before {r['before']:.1%}  grey only {r['grey']:.1%} ({r['grey_none']} none)  "
            f"now {r['now']:.1%} ({r['now_none']} none)  background known {r['known']:.1%}  "
            f"({r['before_ms']:.2f} / {r['now_ms']:.2f} ms)",
            flush=True,
        )
    if args.split != "test" or args.only:
        return
    lines = [
        f"Measured {date.today()} on {machine()}; `python benchmarks/robustness.py` (the shipped `fashion` model, "
        f"{args.n:,} test images per condition, the same images in every condition, one view as `predict` sees it).",
        "",
        "| condition | images | before (issue 17) | grey only (before issue 29) | now | background known "
        "| no garment found: grey only / now | ms per image before / now | CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cond, r in zip(CONDITIONS, rows, strict=True):
        lines.append(
            f"| {cond.name} | {args.n:,} | {r['before']:.1%} | {r['grey']:.1%} | {r['now']:.1%} | {r['known']:.1%} "
            f"| {r['grey_none']} / {r['now_none']} | {r['before_ms']:.2f} / {r['now_ms']:.2f} | {cpu} |"
        )
    write_block("robustness", "\n".join(lines))


if __name__ == "__main__":
    main()
