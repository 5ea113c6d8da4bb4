"""A person's photo of one garment -> a 28x28 image prepared the way Fashion-MNIST's were.

Xiao et al. (2017) trimmed each product photo to the garment, resized its longest edge to 28 px,
sharpened it, extended it to 28x28 around the garment, negated it (light garment on black) and made it
grey. A phone photo differs from those in its background (any shade or colour, texture, uneven light,
noise, JPEG artefacts) and in how much of the frame the garment fills, so the garment is found against the
background first, then those steps are repeated on it. It is found by its distance in colour, not grey
alone: a red shirt on a beige table can have the table's grey. `benchmarks/robustness.py` measures the result.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageCms
from scipy import ndimage

from ..errors import NothingFound

SIDE = 28  # px: Fashion-MNIST's images
# px: the photo is searched at this size at most: 5 photo pixels to each of the model's keeps the
# garment's edges, and the whole preparation takes ~2 ms instead of 3-4 at 280 px.
WORK_SIDE = 5 * SIDE
RING = 0.03  # share of the shorter side read as the border, where the background shows
NOISE_SIGMAS = 3.0  # a pixel differing from the background by more than this many noise deviations may be garment
MIN_CONTRAST = 8.0  # grey levels: smaller differences are sensor noise and JPEG artefacts, whatever the estimate
PEAK_SHARE = 0.3  # a blob is garment only if it holds a difference of this share of the strongest one
KEEP_SHARE = 0.1  # garment blobs smaller than this share of the largest one are specks
# Fashion-MNIST's garments fill their box to its edges: the box is where the garment reaches this share of
# its strongest, so a faint halo (blur, the smoothing that finds it) does not widen the box, shrinking it.
BOX_SHARE = 0.15
SHARPEN = 0.5  # unsharp-mask amount after shrinking, as the dataset sharpened its 28 px images
FLOOR = 0.03  # share of the brightest pixel under which a pixel is left-over background, set to black
# Grey levels per unit of Lab's a* and b*: PIL's L channel spans 0..255 for L* 0..100, so a step in colour
# counts as much as the same step (in Lab) in lightness, the way the eye weighs them.
CHROMA_WEIGHT = 2.55
_TO_LAB = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def _background(smooth: np.ndarray) -> tuple[np.ndarray, float]:
    """The background behind the garment, as a plane (light falls off across a photo), and its noise.

    Fitted to the border, starting from its most common grey level and refitted to the pixels near the
    plane, so it holds where the garment reaches the border: there it covers less of the border than the
    background does, in a spread of shades.
    """
    h, w = smooth.shape
    k = max(1, round(RING * min(h, w)))
    ring = np.ones((h, w), bool)
    ring[k:-k, k:-k] = False
    ys, xs = np.nonzero(ring)
    values = smooth[ring]
    design = np.stack([np.ones_like(values), ys / h - 0.5, xs / w - 0.5], 1)
    counts, edges = np.histogram(values, bins=64, range=(0, 256))
    peak = int(counts.argmax())
    common = (values >= edges[max(peak - 2, 0)]) & (values <= edges[min(peak + 3, 64)])
    plane = np.array([float(np.median(values[common])), 0.0, 0.0])
    for _ in range(4):
        residual = np.abs(values - design @ plane)
        # The 25th percentile of |N(0, s)| is 0.3186 s: robust while the garment covers up to ~3/4 of the ring.
        noise = float(np.percentile(residual, 25)) / 0.3186
        near = residual < max(3 * noise, MIN_CONTRAST)
        plane = np.linalg.lstsq(design[near], values[near], rcond=None)[0]
    fy, fx = np.ogrid[:h, :w]
    return np.clip(plane[0] + plane[1] * (fy / h - 0.5) + plane[2] * (fx / w - 0.5), 0, 255), noise


def _garment_mask(strength: np.ndarray, noise: float) -> np.ndarray:
    """Pixels that differ from the background, in blobs that hold a strong difference (a hysteresis
    threshold: faint parts of the garment join its strong ones, background texture alone does not)."""
    low = max(NOISE_SIGMAS * noise, MIN_CONTRAST)
    high = max(2 * low, PEAK_SHARE * float(strength.max()))
    labels, n = ndimage.label(strength > low, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    strong = np.zeros(n + 1, bool)
    strong[labels[strength > high]] = True
    sizes[~strong | (np.arange(n + 1) == 0)] = 0
    return (sizes >= max(1, KEEP_SHARE * sizes.max()))[labels]


def _box(garment: np.ndarray, mask: np.ndarray) -> tuple[int, int, int, int]:
    """Top, bottom, left, right (exclusive) of the garment's box."""
    strong = ndimage.uniform_filter(garment, 3) > BOX_SHARE * np.percentile(garment[mask], 99)
    rows, cols = np.flatnonzero((strong & mask).any(1)), np.flatnonzero((strong & mask).any(0))
    if not len(rows):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _shrink(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Float image resized by area averaging (PIL's box filter takes any ratio)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BOX))


def _colour(img: torch.Tensor, width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A colour photo at the working size: Lab's a* and b* (2, height, width) float and its RGB bytes
    (height, width, 3); None for a grey photo."""
    if img.shape[0] == 1:
        return None
    rgb = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((width, height), Image.Resampling.BOX)
    # PIL keeps a* and b* as signed bytes in unsigned ones; +128 puts neutral mid-range, as grey levels are
    # (the background's fit reads levels 0..255).
    ab = np.asarray(ImageCms.applyTransform(rgb, _TO_LAB))[..., 1:].view(np.int8)
    return ab.transpose(2, 0, 1).astype(np.float32) + 128, np.asarray(rgb)


def _grey(img: torch.Tensor) -> np.ndarray:
    """The photo's grey levels (H, W) uint8, as PIL (and the dataset's makers) convert colour to grey."""
    if img.shape[0] == 1:
        return img[0].numpy()
    return np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L"))


def prepare(img: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """A decoded uint8 (1,H,W) grey or (3,H,W) colour photo of one garment -> (1,28,28) uint8 like
    Fashion-MNIST, and notes; raises NothingFound when no garment stands out from the background.

    The garment is found against the background (a plane fitted to the border, in grey and in Lab's colour
    axes), cropped to its box, its longest side resized to 28 px, sharpened and centred on black, light
    on dark, its contrast stretched to 0..255: the dataset's own steps. Its brightness is its distance from
    the background: in grey (inverted if the background is the lighter) and, in a colour photo, in colour.
    """
    if img.shape[0] == 3 and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]):
        img = img[:1]  # a grey photo stored in colour: exactly the grey path
    h, w = img.shape[1:]
    scale = min(1.0, WORK_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    a = _grey(img)
    if scale < 1:
        a = _shrink(a, *size)
    a = a.astype(np.float32)
    colour, rgb = _colour(img, *size) or (None, None)
    planes = [a] if colour is None else [a, *colour]
    smooth = [ndimage.gaussian_filter(p, 1.0, mode="nearest") for p in planes]
    fits = [_background(p) for p in smooth]
    diffs = [p - bg for p, (bg, _) in zip(smooth, fits, strict=True)]
    weights = [1.0] + [CHROMA_WEIGHT] * (len(planes) - 1)
    strength = np.sqrt(sum((k * d) ** 2 for k, d in zip(weights, diffs, strict=True)))
    noise = float(np.sqrt(sum((k * n) ** 2 for k, (_, n) in zip(weights, fits, strict=True))))
    background = fits[0][0]
    mask = _garment_mask(strength, noise)
    if not mask.any():
        shade = _shade(background, rgb, mask)
        raise NothingFound(f"no garment found: nothing stands out from the background ({shade})")
    darker = float(diffs[0][mask].mean()) < 0
    level = float(background[mask].mean())
    if (h, w) == (SIDE, SIDE) and colour is None and not darker and level < MIN_CONTRAST:
        # Already a Fashion-MNIST image: preparing it again only moves it (its box holds pixels too faint to
        # find again) and costs 0.5 points of accuracy on the held-out training images.
        return img.clone(), ["already 28x28, light on black as Fashion-MNIST's images: used as it is"]
    mask = ndimage.binary_dilation(mask)
    garment = np.clip((background - a) if darker else (a - background), 0, None)
    if colour is not None:
        chroma = sum((p - bg) ** 2 for p, (bg, _) in zip(colour, fits[1:], strict=True))
        garment = np.sqrt(garment**2 + CHROMA_WEIGHT**2 * chroma)
    garment = garment * mask
    top, bottom, left, right = _box(garment, mask)
    ch, cw = bottom - top, right - left
    notes = []
    if (ch, cw) != a.shape:
        seen = f"{round(cw * w / a.shape[1])}x{round(ch * h / a.shape[0])}"  # in the photo's own pixels
        notes.append(f"cropped to the garment ({seen} of {w}x{h})")
    if colour is not None:
        notes.append(f"found by its colour and grey against the background ({_shade(background, rgb, mask)})")
    if darker:
        notes.append(f"inverted: light background (grey {level:.0f}); the model knows light garments on black")
    long_side = max(ch, cw)
    oh, ow = max(1, round(ch * SIDE / long_side)), max(1, round(cw * SIDE / long_side))
    small = np.clip(_shrink(garment[top:bottom, left:right], ow, oh), 0, None)
    sharpened = long_side > SIDE  # shrinking softens edges; an image not shrunk keeps its own
    if sharpened:
        small = np.clip(small + SHARPEN * (small - ndimage.gaussian_filter(small, 1.0, mode="constant")), 0, None)
    canvas = np.zeros((SIDE, SIDE), np.float32)
    # Centred by its box, as the dataset's are: their boxes' centres sit at 13.5-14 px (std 0.25 px),
    # their centres of mass anywhere from 12 to 17 px.
    y0, x0 = (SIDE - oh + 1) // 2, (SIDE - ow + 1) // 2
    canvas[y0 : y0 + oh, x0 : x0 + ow] = small
    canvas = np.clip(canvas - FLOOR * canvas.max(), 0, None)
    peak = float(canvas.max())
    stretch = 255 / peak if peak > 0 else 1.0
    resized = f"resized to {ow}x{oh}{', sharpened' if sharpened else ''} and " if (oh, ow) != (ch, cw) else ""
    notes.append(f"{resized}centred on {SIDE}x{SIDE}")
    notes.append(f"background set to black, contrast stretched x{stretch:.1f}")
    return torch.from_numpy((canvas * stretch).round().clip(0, 255).astype(np.uint8))[None], notes


def _shade(background: np.ndarray, rgb: np.ndarray | None, mask: np.ndarray) -> str:
    """The background in words: its grey level, or in a colour photo its colour as #rrggbb."""
    if rgb is None:
        return f"grey {float(background[mask].mean() if mask.any() else background.mean()):.0f}"
    return "#" + bytes(np.median(rgb[~mask] if (~mask).any() else rgb.reshape(-1, 3), 0).round().astype(np.uint8)).hex()
